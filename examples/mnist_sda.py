"""Reproduce the deeplearning.net SdA tutorial on MNIST, with and without pretraining.

    python examples/mnist_sda.py [--data mnist] [--pretrain-epochs 15] [--out DIR]

`--data` takes what `stackae pretrain --data` takes: `mnist` (from
STACKAE_MNIST=/path/to/mnist.npz, Keras's cache, or a download), or a path.

Greedy layer-wise pretraining of three denoising autoencoders (masking noise
0.1 / 0.2 / 0.3), then supervised fine-tuning of the exported classifier with
early stopping on validation accuracy; then the same network from random
weights, fine-tuned the same way. Prints the tutorial's per-layer costs, the
times, and a table of validation / test errors. Writes to --out the
pretrained stack.keras and fine-tuned classifier.keras, the first layer's
filters after pretraining and after fine-tuning, the deep autoencoder's
reconstructions of test digits, and every history as JSON.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import stackae  # noqa: E402
from stackae import data, export  # noqa: E402
from stackae.finetuning import error_rate, finetune  # noqa: E402
from stackae.images import reconstructions_image, save_filters, save_png  # noqa: E402

SEED = 123
N_CLASSES = 10
# The tutorial's split: the last 10,000 rows of x_train are the validation set.
VALID_SIZE = 10_000


class PrintCost(keras.callbacks.Callback):
    """Prints `Pre-training layer L, epoch E, cost C` after each epoch, as the tutorial does."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def on_epoch_end(self, epoch, logs=None):
        print(
            f"Pre-training layer {self.layer}, epoch {epoch}, cost {logs['loss']:.6f}", flush=True
        )


class PrintEpoch(keras.callbacks.Callback):
    """One line per fine-tuning epoch: training loss and validation error."""

    def __init__(self, label):
        super().__init__()
        self.label = label

    def on_epoch_end(self, epoch, logs=None):
        print(
            f"{self.label}: epoch {epoch + 1}, loss {logs['loss']:.4f}, "
            f"validation error {100 * (1 - logs['val_accuracy']):.2f} %",
            flush=True,
        )


def int_list(text):
    return tuple(int(v) for v in text.split(","))


def float_list(text):
    return tuple(float(v) for v in text.split(","))


def random_classifier(sizes, n_classes, dropout=0.0, input_dropout=0.0):
    """The classifier's architecture with fresh weights: the tutorial's MLP initialisation."""
    # uniform(+-4 sqrt(6 / (fan_in + fan_out))) is what the tutorial uses for sigmoid
    # layers, and what the pretrained layers started from: only pretraining differs.
    hidden = [
        keras.layers.Dense(
            units,
            activation="sigmoid",
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=16.0, mode="fan_avg", distribution="uniform"
            ),
            name=f"encoder_{k + 1}",
        )
        for k, units in enumerate(sizes[1:])
    ]
    top = keras.layers.Dense(
        n_classes, activation="softmax", kernel_initializer="zeros", name="softmax"
    )
    layers = [keras.Input((sizes[0],))]
    if input_dropout:
        layers.append(keras.layers.Dropout(input_dropout))
    for dense in hidden:
        layers += [dense, keras.layers.Dropout(dropout)] if dropout else [dense]
    return keras.Sequential([*layers, top], name="random_init")


def tune(label, model, split, spec):
    """Fine-tune `model`; returns a row of the results table and the history."""
    keras.utils.set_random_seed(SEED)  # both networks see the same batches
    start = time.perf_counter()
    history = finetune(
        model,
        (split.train.x, split.train.y),
        (split.valid.x, split.valid.y),
        spec,
        callbacks=[PrintEpoch(label)],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    row = {
        "init": label,
        "valid": error_rate(model, split.valid.x, split.valid.y),
        "test": error_rate(model, split.test.x, split.test.y),
        "epochs": len(history.history["loss"]),
        "best_epoch": int(np.argmax(history.history["val_accuracy"])) + 1,
        "seconds": seconds,
    }
    print(f"The fine-tuning of the {label} network ran for {seconds / 60:.2f}m", flush=True)
    return row, history.history


def print_table(rows):
    print("| init | valid error % | test error % | epochs (best) | fine-tune time |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['init']} | {100 * r['valid']:.2f} | {100 * r['test']:.2f} "
            f"| {r['epochs']} ({r['best_epoch']}) | {r['seconds'] / 60:.1f} min |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default="mnist",
        help="mnist (STACKAE_MNIST, Keras's cache or a download), or a path.",
    )
    parser.add_argument("--layers", type=int_list, default=(1000, 1000, 1000))
    parser.add_argument("--corruption", type=float_list, default=(0.1, 0.2, 0.3))
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--pretrain-lr", type=float, default=0.1)
    parser.add_argument("--pretrain-batch-size", type=int, default=20)
    # 50: the best validation epoch of the 100-epoch run (README); more epochs only waited.
    parser.add_argument("--finetune-epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=20, help="Fine-tuning batch size.")
    parser.add_argument("--lr", type=float, default=0.1, help="Fine-tuning learning rate.")
    parser.add_argument("--momentum", type=float, default=0.9, help="Fine-tuning SGD momentum.")
    parser.add_argument("--lr-decay", type=float, default=0.98, help="Fine-tuning lr factor/epoch.")
    parser.add_argument("--dropout", type=float, default=0.2, help="Fine-tuning hidden dropout.")
    parser.add_argument("--input-dropout", type=float, default=0.1, help="... on the pixels.")
    parser.add_argument("--patience", type=int, default=20, help="Epochs without a better val.")
    parser.add_argument("--valid-size", type=int, default=VALID_SIZE)
    parser.add_argument("--limit", type=int, default=None, help="First N rows of each split.")
    parser.add_argument("--stack", default=None, help="A saved stack.keras: skip pretraining.")
    parser.add_argument(
        "--init",
        choices=("both", "pretrained", "random"),
        default="both",
        help="Fine-tune the pretrained network, the random-init one, or both.",
    )
    parser.add_argument("--out", default="sda_out", help="Folder for figures and histories.")
    args = parser.parse_args(argv)

    split = data.load(args.data, valid_size=args.valid_size, limit=args.limit)
    print(
        f"MNIST: {len(split.train)} train / {len(split.valid)} validation / "
        f"{len(split.test)} test rows",
        flush=True,
    )
    print(
        f"Settings: pretraining SGD lr {args.pretrain_lr}, batch {args.pretrain_batch_size}, "
        f"{args.pretrain_epochs} epochs per layer; fine-tuning SGD lr {args.lr}, momentum "
        f"{args.momentum}, lr x {args.lr_decay} per epoch, batch {args.batch_size}, "
        f"at most {args.finetune_epochs} epochs, patience {args.patience}, dropout "
        f"{args.input_dropout} on the input and {args.dropout} on hidden layers",
        flush=True,
    )
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(SEED)

    specs = stackae.layer_specs(
        args.layers,
        corruption=args.corruption,
        epochs=args.pretrain_epochs,
        batch_size=args.pretrain_batch_size,
        learning_rate=args.pretrain_lr,
    )
    if args.stack:
        # Try other fine-tuning settings without pretraining again.
        stack, pretraining, pretrain_seconds = keras.saving.load_model(args.stack), [], 0.0
        print(f"Pretrained stack loaded from {args.stack}", flush=True)
    else:
        stack = stackae.Stack(specs, seed=SEED)
        start = time.perf_counter()
        pretraining = stackae.pretrain(
            stack, split.train.x, callbacks=lambda k: [PrintCost(k)], verbose=0
        )
        pretrain_seconds = time.perf_counter() - start
        print(f"The pretraining code ran for {pretrain_seconds / 60:.2f}m", flush=True)
        stack.save(os.path.join(args.out, "stack.keras"))

    image_shape = split.image_shape
    kernel = stack.encoder_layers[0].kernel.numpy()
    save_filters(kernel, os.path.join(args.out, "filters_pretrained.png"), image_shape)
    # Test digits with 30% of the pixels masked, and what the whole deep autoencoder
    # (three encoders, three tied decoders) makes of them.
    deep = export.deep_autoencoder(stack)
    sample = split.test.x[:10]
    masked = sample * (np.random.default_rng(SEED).random(sample.shape) >= 0.3)
    save_png(
        reconstructions_image(sample, masked, deep.predict(masked, verbose=0)),
        os.path.join(args.out, "deep_reconstructions.png"),
    )

    spec = stackae.FinetuneSpec(
        epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        momentum=args.momentum,
        patience=args.patience,
        # A learning rate that shrinks each epoch lets the last epochs settle into a minimum.
        lr_decay=args.lr_decay,
        dropout=args.dropout,
        input_dropout=args.input_dropout,
    )
    rows, histories = [], {}
    if args.init != "random":
        model = export.classifier(
            stack, N_CLASSES, dropout=spec.dropout, input_dropout=spec.input_dropout
        )
        row, histories["pretrained"] = tune("pretrained", model, split, spec)
        rows.append(row)
        kernel = model.get_layer("encoder_1").kernel.numpy()
        save_filters(kernel, os.path.join(args.out, "filters_finetuned.png"), image_shape)
        model.save(os.path.join(args.out, "classifier.keras"))
    if args.init != "pretrained":
        model = random_classifier(
            [split.n_features, *stack.sizes], N_CLASSES, spec.dropout, spec.input_dropout
        )
        row, histories["random"] = tune("random", model, split, spec)
        rows.append(row)

    print(f"Pretraining: {pretrain_seconds / 60:.1f} min")
    print_table(rows)
    with open(os.path.join(args.out, "histories.json"), "w") as f:
        json.dump(
            {
                "settings": vars(args),
                "pretraining": [h.history for h in pretraining],
                "pretrain_seconds": pretrain_seconds,
                "finetuning": histories,
                "results": rows,
            },
            f,
            indent=1,
            default=float,
        )


if __name__ == "__main__":
    main()
