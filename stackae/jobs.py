"""What the command line does, as library calls: pretrain, fine-tune, evaluate and encode a run."""

import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np

from stackae import export, runs
from stackae.config import FINETUNE_DEFAULTS
from stackae.data import batches, check_batch, check_labels, check_width
from stackae.finetune import confusion_counts, error_rate, finetune
from stackae.runs import Run, RunError
from stackae.stack import Stack, pretrain


class TrainingDiverged(RuntimeError):
    """The cost became NaN or infinite; the message names layer, epoch and step."""


def data_info(data, **options):
    """What the manifest records about the data, enough to load it again."""
    shapes = {
        name: list(split.x.shape)
        for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test))
        if split is not None
    }
    return {
        "name": data.name,
        "origin": str(data.origin),
        "n_features": int(data.n_features),
        "n_classes": data.n_classes,
        "image_shape": list(data.image_shape) if data.image_shape else None,
        "shapes": shapes,
        "options": options,
    }


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch of layer k: weights + optimizer state, then the manifest, atomically."""

    def __init__(self, run, k):
        super().__init__()
        self.run = run
        self.k = k

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.started = time.perf_counter()
        self.first_update = self._updates()

    def _updates(self):
        # .value: under MultiWorkerMirroredStrategy a MirroredVariable, which int() refuses.
        return int(self.model.optimizer.iterations.value.numpy())

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            # A Keras "batch" here may be a group of batches: count the updates.
            step = self._updates() - self.first_update
            raise TrainingDiverged(
                f"layer {self.k + 1}, epoch {self.epoch + 1}: the cost became {float(loss)} "
                f"by step {step}; lower the learning rate. The last good checkpoint is kept."
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not all(math.isfinite(float(v)) for v in logs.values()):
            raise TrainingDiverged(
                f"layer {self.k + 1}, epoch {epoch + 1}: the cost became {logs}; "
                "lower the learning rate. The last good checkpoint is kept."
            )
        entry = self.run.layers[self.k]
        previous = entry.get("checkpoint")
        name = self.run.layer_checkpoint(self.k, epoch + 1)
        # A new name each epoch: the file is recorded together with the epoch count.
        runs.atomic_write(
            self.run.file(name), lambda tmp: self.model.save_weights(tmp), suffix=".weights.h5"
        )
        self.run.files[name] = runs.sha256(self.run.file(name))
        entry["epochs_done"] = epoch + 1
        entry["checkpoint"] = name
        entry["seconds"] = round(entry.get("seconds", 0.0) + time.perf_counter() - self.started, 3)
        for key, value in logs.items():
            entry["history"].setdefault(key, []).append(float(value))
        stale = previous if previous != name else None
        if stale:  # dropped from the manifest first, then from the disk
            self.run.files.pop(stale, None)
        self.run.save()
        if stale:
            self.run.file(stale).unlink(missing_ok=True)
        write_history_csv(self.run)


class LayerBanner(keras.callbacks.Callback):
    """Prints which layer is training, above Keras's progress bar."""

    def __init__(self, k, n_layers, n_in, spec):
        super().__init__()
        self.text = (
            f"layer {k + 1}/{n_layers}: {n_in} -> {spec.units}, {spec.noise} {spec.corruption:g}"
        )

    def on_train_begin(self, logs=None):
        print(self.text, flush=True)


def write_history_csv(run):
    rows = ["layer,epoch,loss,val_loss"]
    for k, layer in enumerate(run.layers):
        history = layer["history"]
        for e, loss in enumerate(history.get("loss", [])):
            val = history.get("val_loss", [])
            rows.append(
                f"{k + 1},{e + 1},{loss:.6f},{val[e]:.6f}"
                if e < len(val)
                else f"{k + 1},{e + 1},{loss:.6f},"
            )
    runs.atomic_write_text(run.file(runs.HISTORY), "\n".join(rows) + "\n")


def new_run(out, data, specs, *, seed, overwrite=False, data_options=None):
    """Create the run directory with its manifest and the untrained stack."""
    keras.utils.set_random_seed(seed)  # the initial weights of every layer follow from the seed
    stack = Stack(specs, seed=seed)
    stack.build((None, data.n_features))
    manifest = {
        "status": "pretraining",
        "versions": runs.versions(),
        "config": {"specs": [dataclasses.asdict(s) for s in specs], "seed": seed},
        "data": data_info(data, **(data_options or {})),
        "layers": [
            {"units": s.units, "epochs_done": 0, "finished": False, "history": {}, "seconds": 0.0}
            for s in specs
        ],
    }
    run = Run.create(out, manifest, overwrite=overwrite)
    run.save_model(stack, runs.STACK)
    return run, stack


def load_stack(run):
    stack = run.load_model(runs.STACK)
    if not isinstance(stack, Stack):
        raise RunError(f"{run.file(runs.STACK)}: not a stackae stack")
    if [s.units for s in stack.specs] != [layer["units"] for layer in run.layers]:
        raise RunError(f"{run.file(runs.STACK)}: layer sizes do not match the manifest")
    return stack


def worker_scratch(out, resume):
    """A scratch run directory for a worker that is not the chief (a copy of `out` to resume)."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="stackae-worker-")) / "run"
    if resume:
        shutil.copytree(out, scratch)
    return str(scratch)


def remove_scratch(scratch):
    import shutil

    shutil.rmtree(Path(scratch).parent, ignore_errors=True)


def pretrain_run(run, stack, data, *, verbose="auto", tensorboard=False):
    """Pretrain every unfinished layer of the run's stack, checkpointing each epoch."""
    check_width(data.train.x, run.manifest["data"]["n_features"], "training data")
    start = next((k for k, layer in enumerate(run.layers) if not layer["finished"]), None)
    resume_from = None
    if start is not None and run.layers[start]["epochs_done"]:
        checkpoint = run.layers[start].get("checkpoint")
        if not isinstance(checkpoint, str) or checkpoint not in run.files:
            raise RunError(f"{run.path}: layer {start + 1} checkpoint is missing")
        resume_from = (run.layers[start]["epochs_done"], run.file(checkpoint))
        _check_resume_weights(stack, start, resume_from[1])
    run.remove_stray_checkpoints()

    def callbacks(k):
        spec = stack.specs[k]
        n_in = data.n_features if k == 0 else stack.specs[k - 1].units
        found = [LayerBanner(k, len(stack.specs), n_in, spec), EpochCheckpoint(run, k)]
        if tensorboard:
            found.append(
                keras.callbacks.TensorBoard(str(run.file("tensorboard") / f"layer_{k + 1}"))
            )
            found.append(FilterImages(run, k, data.image_shape))
        return found

    def on_layer_end(k, autoencoder, history):
        run.save_model(stack, runs.STACK)
        entry = run.layers[k]
        entry["finished"] = True
        checkpoint = entry.pop("checkpoint", None)
        run.save()
        if checkpoint:
            run.forget(checkpoint)

    if start is not None:
        pretrain(
            stack,
            data.train.x,
            data.valid.x if data.valid is not None else None,
            callbacks=callbacks,
            verbose=verbose,
            start_layer=start,
            resume_from=resume_from,
            on_layer_end=on_layer_end,
        )
    if run.manifest["status"] == "pretraining":
        run.save_model(export.encoder(stack), runs.ENCODER)
        run.manifest["status"] = "pretrained"
        run.save()
    return run


def _check_resume_weights(stack, k, path):
    """Open the checkpoint once before training so a damaged file fails with one line."""
    probe = stack.autoencoder(k)
    probe.compile(optimizer=stack.specs[k].make_optimizer())
    probe.build((None, stack.encoder_layers[k].n_visible))
    probe.optimizer.build(probe.trainable_variables)
    saved = [keras.ops.convert_to_numpy(w).copy() for w in stack.encoder_layers[k].weights]
    runs.load_weights(probe, path)
    for w, value in zip(stack.encoder_layers[k].weights, saved):
        w.assign(value)  # pretrain() loads the checkpoint itself


class FilterImages(keras.callbacks.Callback):
    """Logs the layer's first 100 filters to TensorBoard after every epoch."""

    def __init__(self, run, k, image_shape):
        super().__init__()
        self.logdir = str(run.file("tensorboard") / f"layer_{k + 1}" / "filters")
        self.image_shape = image_shape

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        from stackae.images import filters_image

        picture = filters_image(
            keras.ops.convert_to_numpy(self.model.layer.kernel), self.image_shape
        )
        writer = tf.summary.create_file_writer(self.logdir)
        with writer.as_default():
            tf.summary.image("filters", picture[None, :, :, None], step=epoch)
        writer.close()


def summary_rows(run):
    """(layer, size, corruption, epochs, final cost, seconds) for each layer."""
    rows = []
    for k, (layer, spec) in enumerate(zip(run.layers, run.manifest["config"]["specs"])):
        losses = layer["history"].get("loss", [])
        rows.append(
            (
                k + 1,
                spec["units"],
                spec["corruption"],
                layer["epochs_done"],
                losses[-1] if losses else float("nan"),
                layer.get("seconds", 0.0),
            )
        )
    return rows


def labelled(split, name, n_classes):
    if split is None or split.y is None:
        raise RunError(f"{name}: the data has no labels")
    check_labels(split.y, n_classes, name)
    return split.x, split.y


def finetune_run(run, data, spec=FINETUNE_DEFAULTS, *, verbose="auto"):
    """Export the classifier, fine-tune it with labels, save classifier.keras."""
    stack = load_stack(run)
    if not all(layer["finished"] for layer in run.layers):
        raise RunError(f"{run.path}: pretraining is not finished; resume it with --resume first")
    check_width(data.train.x, run.manifest["data"]["n_features"], "training data")
    n_classes = data.n_classes
    train = labelled(data.train, "training data", n_classes)
    check_batch(len(train[0]), spec.batch_size, "training data")
    valid = labelled(data.valid, "validation data", n_classes) if data.valid is not None else None
    keras.utils.set_random_seed(run.manifest["config"]["seed"])  # the same batches every time
    model = export.classifier(
        stack, n_classes, dropout=spec.dropout, input_dropout=spec.input_dropout
    )
    started = time.perf_counter()
    history = finetune(model, train, valid, spec, verbose=verbose)
    seconds = time.perf_counter() - started
    result = {
        "spec": dataclasses.asdict(spec),
        "n_classes": n_classes,
        "epochs": len(history.history["loss"]),
        "seconds": round(seconds, 3),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "valid_error": error_rate(model, *valid) if valid else None,
        "test_error": None,
    }
    if data.test is not None and data.test.y is not None:
        result["test_error"] = error_rate(model, *labelled(data.test, "test data", n_classes))
    run.save_model(model, runs.CLASSIFIER)
    run.manifest["finetune"] = result
    run.manifest["status"] = "finetuned"
    run.save()
    return result


def evaluate_run(run, data):
    """Test error and confusion counts of the classifier, reconstruction cost of each layer."""
    stack = load_stack(run)
    split = data.test if data.test is not None else data.valid or data.train
    check_width(split.x, run.manifest["data"]["n_features"], "evaluation data")
    result = {"rows": int(len(split.x)), "reconstruction": []}
    for k in range(len(stack.specs)):
        autoencoder = stack.autoencoder(k)
        autoencoder.compile()
        codes = batches(stack.codes(split.x, k), 1024)
        cost = autoencoder.evaluate(codes, verbose=0, return_dict=True)["loss"]
        result["reconstruction"].append(float(cost))
    if run.file(runs.CLASSIFIER).is_file() and split.y is not None:
        model = run.load_model(runs.CLASSIFIER)
        n_classes = model.output_shape[-1]
        x, y = labelled(split, "evaluation data", n_classes)
        result["error"] = error_rate(model, x, y)
        result["confusion"] = confusion_counts(model, x, y, n_classes).tolist()
    return result


def encode_run(run, x, layer=None):
    """Codes of `x` after `layer` layers (all by default), as a float32 array."""
    stack = load_stack(run)
    check_width(x, run.manifest["data"]["n_features"], "data")
    depth = len(stack.specs) if layer is None else layer
    if not 1 <= depth <= len(stack.specs):
        raise RunError(f"--layer must be between 1 and {len(stack.specs)}; got {depth}")
    return np.asarray(stack.codes(x, depth))


def reconstruct_run(run, data, path, n=20, corruption=None):
    """PNG of n rows: input | corrupted input | reconstruction through the whole stack."""
    import tensorflow as tf

    from stackae.images import save_reconstructions
    from stackae.noise import corrupt

    stack = load_stack(run)
    split = data.test if data.test is not None else data.train
    check_width(split.x, run.manifest["data"]["n_features"], "data")
    x = np.asarray(split.x[:n], dtype="float32")
    level = stack.specs[0].corruption if corruption is None else corruption
    noisy = corrupt(
        tf.constant(x), stack.specs[0].noise, level, tf.constant([stack.seed, 0], "int64")
    )
    recon = stack.decode(stack.encode(noisy))
    shape = run.manifest["data"]["image_shape"]
    return save_reconstructions(
        x,
        np.asarray(noisy),
        keras.ops.convert_to_numpy(recon),
        path,
        image_shape=tuple(shape) if shape else None,
    )
