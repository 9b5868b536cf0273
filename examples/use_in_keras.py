"""Use stackae in ordinary Keras: the layer in your models, a frozen encoder, a saved classifier.

    python examples/use_in_keras.py [--limit 3000] [--out DIR]

Six ways, on the mnist-sample that ships with stackae:
(a) a TiedAutoEncoderLayer as the first layer of a functional classifier,
    trained with plain compile/fit on labels, saved and loaded as .keras;
(b) a pretrained stack's encoder as a frozen feature extractor in front of a
    small Dense head;
(c) the exported classifier saved as .keras and loaded back by plain Keras in
    a process that never imports stackae;
(d) a tied autoencoder written as a plain functional model:
    `h = tied(x); x_hat = tied(h, reverse=True)`;
(e) a pretrained layer with two heads: a softmax on its code and its own tied
    decoder, trained together (labels plus reconstruction);
(f) the layer in a Sequential model between Dropout, BatchNormalization and
    Dense layers.
Each model trains with plain fit, is saved as .keras and loads back with the
same predictions (the layer is registered with Keras by stackae: no
custom_objects).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import stackae  # noqa: E402
from stackae import data, export  # noqa: E402
from stackae.finetuning import error_rate, finetune  # noqa: E402

SEED = 123
N_CLASSES = 10


def numpy(variable):
    # Variable.numpy(), not ops.convert_to_numpy: the latter trips a NumPy 2 DeprecationWarning.
    return variable.numpy()


def save_and_load(model, path):
    """The model saved as .keras at `path` and loaded back (None when `path` is None)."""
    if path is None:
        return None
    model.save(path)
    return keras.saving.load_model(path)


def layer_in_model(x, y, units=64, epochs=3, path=None):
    """(a) Input -> TiedAutoEncoderLayer -> Dense(softmax), trained with labels only.

    The layer only encodes here, so its decoder bias is frozen: Keras would
    otherwise warn that it has no gradient.
    Returns (model, kernel before, kernel after, per-epoch losses, reloaded model).
    """
    inputs = keras.Input((x.shape[1],))
    tied = stackae.TiedAutoEncoderLayer(units, name="tied")
    outputs = keras.layers.Dense(N_CLASSES, activation="softmax")(tied(inputs))
    tied.decoder_bias.trainable = False  # unused when only encoding
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    before = numpy(model.get_layer("tied").kernel).copy()
    history = model.fit(x, y, batch_size=20, epochs=epochs, verbose=0)
    after = numpy(model.get_layer("tied").kernel)
    return model, before, after, history.history["loss"], save_and_load(model, path)


def tied_autoencoder(x, units=64, epochs=5, path=None):
    """(d) A tied autoencoder as a functional model: one layer, called both ways.

    The decoder uses the encoder's kernel transposed, so the model has one
    kernel and two biases. Returns (model, decoder bias before, after,
    per-epoch losses, reloaded model).
    """
    inputs = keras.Input((x.shape[1],))
    tied = stackae.TiedAutoEncoderLayer(units, name="tied")
    code = tied(inputs)  # (batch, units)
    reconstruction = tied(code, reverse=True)  # (batch, n_visible)
    model = keras.Model(inputs, reconstruction)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
    before = numpy(tied.decoder_bias).copy()
    history = model.fit(x, x, batch_size=20, epochs=epochs, verbose=0)
    after = numpy(tied.decoder_bias)
    return model, before, after, history.history["loss"], save_and_load(model, path)


def decoder_head(x, y, units=64, pretrain_epochs=3, epochs=3, path=None):
    """(e) A pretrained layer with two heads: labels from its code, and its tied decoder.

    The layer is pretrained as a denoising autoencoder by stackae, then
    trained on labels while the reconstruction head keeps it a good
    autoencoder. Returns (model, pretrained kernel, kernel after,
    history, reloaded model).
    """
    stack = stackae.Stack(
        stackae.layer_specs((units,), corruption=0.2, epochs=pretrain_epochs), seed=SEED
    )
    stackae.pretrain(stack, x, verbose=0)
    tied = stack.encoder_layers[0]
    pretrained = numpy(tied.kernel).copy()

    inputs = keras.Input((x.shape[1],))
    code = tied(inputs)
    outputs = {
        "label": keras.layers.Dense(N_CLASSES, activation="softmax", name="label")(code),
        "reconstruction": tied(code, reverse=True),
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss={"label": "sparse_categorical_crossentropy", "reconstruction": "binary_crossentropy"},
        loss_weights={"label": 1.0, "reconstruction": 0.5},
    )
    history = model.fit(
        x, {"label": y, "reconstruction": x}, batch_size=20, epochs=epochs, verbose=0
    )
    after = numpy(tied.kernel)
    return model, pretrained, after, history.history, save_and_load(model, path)


def mixed_model(x, y, units=64, epochs=3, path=None):
    """(f) The layer in a Sequential model with Dropout, BatchNormalization and Dense.

    Returns (model, per-epoch losses, reloaded model).
    """
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dropout(0.1),
            stackae.TiedAutoEncoderLayer(units, name="tied"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    model.get_layer("tied").decoder_bias.trainable = False  # it only encodes here
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model, history.history["loss"], save_and_load(model, path)


def frozen_encoder(x, y, units=(256, 64), pretrain_epochs=5, epochs=10):
    """(b) Pretrain a stack, then train only a Dense head on its frozen encoder.

    Returns (model, encoder weights before, after, head weights before, after).
    """
    stack = stackae.Stack(
        stackae.layer_specs(units, corruption=0.2, epochs=pretrain_epochs), seed=SEED
    )
    stackae.pretrain(stack, x, verbose=0)
    encoder = export.encoder(stack)
    encoder.trainable = False
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            encoder,
            keras.layers.Dense(32, activation="relu", name="head_hidden"),
            keras.layers.Dense(N_CLASSES, activation="softmax", name="head_out"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    head = [model.get_layer("head_hidden"), model.get_layer("head_out")]
    encoder_before = [numpy(w).copy() for w in encoder.weights]
    head_before = [numpy(w).copy() for layer in head for w in layer.weights]
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    encoder_after = [numpy(w) for w in encoder.weights]
    head_after = [numpy(w) for layer in head for w in layer.weights]
    return model, stack, encoder_before, encoder_after, head_before, head_after


# Run by a fresh interpreter: only Keras and NumPy, and proof that stackae stayed out.
LOAD_WITHOUT_STACKAE = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np

    model = keras.saving.load_model(sys.argv[1])
    np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
    assert "stackae" not in sys.modules, "stackae was imported"
    print(type(model).__name__, [type(layer).__name__ for layer in model.layers])
    """
)


def predict_without_stackae(model_path, x, workdir):
    """(c) Predictions of the saved model from a process that never imports stackae."""
    x_path = os.path.join(workdir, "x.npy")
    out_path = os.path.join(workdir, "predictions.npy")
    np.save(x_path, x)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_STACKAE, model_path, x_path, out_path],
        capture_output=True,
        text=True,
        # Not from the repository root, where `stackae` would be importable by accident.
        cwd=workdir,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loading without stackae failed:\n{result.stderr}")
    return np.load(out_path), result.stdout.strip()


def saved_classifier(stack, train, valid, path, epochs=2):
    """(c) Export the stack's classifier, fine-tune it briefly, save it as .keras."""
    model = export.classifier(stack, N_CLASSES)
    spec = stackae.FinetuneSpec(epochs=epochs, batch_size=20, patience=epochs)
    finetune(model, train, valid, spec, verbose=0)
    model.save(path)
    return model


def same_predictions(model, reloaded, x):
    """Whether two models (outputs: one array or a dict of them) predict the same on `x`."""
    a, b = model.predict(x, verbose=0), reloaded.predict(x, verbose=0)
    if isinstance(a, dict):
        return all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    return np.allclose(a, b, atol=1e-6)


def label_model(model):
    """The label head of (e)'s two-headed model, as a model of its own (same weights)."""
    return keras.Model(model.inputs, model.get_layer("label").output)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=3000, help="Rows of each split to use.")
    parser.add_argument("--out", default=None, help="Folder for the .keras files (default: tmp).")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(SEED)
    sample = data.load("mnist-sample", limit=args.limit)
    x, y = sample.train.x, sample.train.y
    valid = (sample.valid.x, sample.valid.y)
    print(f"mnist-sample: {len(x)} train / {len(valid[0])} validation rows")
    out = args.out or tempfile.mkdtemp(prefix="stackae_use_in_keras_")
    os.makedirs(out, exist_ok=True)

    model, before, after, losses, reloaded = layer_in_model(
        x, y, path=os.path.join(out, "tied_classifier.keras")
    )
    same = same_predictions(model, reloaded, valid[0])
    print(
        "(a) TiedAutoEncoderLayer in a functional model, plain fit on labels: "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"kernel moved by {np.abs(after - before).max():.3f} (max), "
        f"validation error {100 * error_rate(model, *valid):.1f} %, "
        f".keras reload gives the same predictions: {same}"
    )

    model, stack, enc_before, enc_after, head_before, head_after = frozen_encoder(x, y)
    frozen = all(np.array_equal(b, a) for b, a in zip(enc_before, enc_after))
    head_moved = any(not np.array_equal(b, a) for b, a in zip(head_before, head_after))
    print(
        "(b) frozen pretrained encoder + Dense head: "
        f"encoder unchanged: {frozen}, head trained: {head_moved}, "
        f"validation error {100 * error_rate(model, *valid):.1f} %"
    )

    path = os.path.join(out, "classifier.keras")
    classifier = saved_classifier(stack, (x, y), valid, path)
    predictions, summary = predict_without_stackae(path, valid[0], out)
    same = np.allclose(predictions, classifier.predict(valid[0], verbose=0), atol=1e-6)
    print(
        f"(c) {os.path.basename(path)} loaded by plain Keras without stackae ({summary}): "
        f"same predictions: {same}"
    )

    model, before, after, losses, reloaded = tied_autoencoder(
        x, path=os.path.join(out, "tied_autoencoder.keras")
    )
    same = same_predictions(model, reloaded, valid[0])
    print(
        "(d) functional tied autoencoder, tied(h, reverse=True): "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"decoder bias moved by {np.abs(after - before).max():.3f} (max), "
        f"{len(model.trainable_weights)} trainable weights (one kernel, two biases), "
        f".keras reload gives the same reconstructions: {same}"
    )

    model, pretrained, after, history, reloaded = decoder_head(
        x, y, path=os.path.join(out, "decoder_head.keras")
    )
    same = same_predictions(model, reloaded, valid[0])
    print(
        "(e) pretrained layer + softmax head + its tied decoder as a second head: "
        f"label loss {history['label_loss'][0]:.3f} -> {history['label_loss'][-1]:.3f}, "
        f"reconstruction loss {history['reconstruction_loss'][0]:.3f} -> "
        f"{history['reconstruction_loss'][-1]:.3f}, "
        f"validation error {100 * error_rate(label_model(model), *valid):.1f} %, "
        f".keras reload gives the same outputs: {same}"
    )

    model, losses, reloaded = mixed_model(x, y, path=os.path.join(out, "mixed.keras"))
    same = same_predictions(model, reloaded, valid[0])
    print(
        "(f) Sequential: Dropout, TiedAutoEncoderLayer, BatchNormalization, Dense, Dropout, "
        f"Dense: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"validation error {100 * error_rate(model, *valid):.1f} %, "
        f".keras reload gives the same predictions: {same}"
    )


if __name__ == "__main__":
    main()
