"""Run: the run directory and the only owner of its manifest.

A run directory holds everything one run wrote: `manifest.json` (config, data,
versions, per-layer progress and history, fine-tuning progress, status, and the
sha256 of every file it vouches for), the stack, per-epoch checkpoints, the
exports and pictures. Every write is atomic; a file is recorded in the manifest
only once it is complete, and dropped from it before it is replaced, so the
manifest never vouches for a file that is not there. Nothing in this module
imports a backend: `stackae info` reads a run without starting TensorFlow.
"""

import dataclasses
import datetime
import errno
import fcntl
import json
import math
import os
import platform
import shutil
import socket
import stat
from pathlib import Path

from stackae.config import FinetuneSpec, LayerSpec
from stackae.errors import CheckpointError, RunError
from stackae.files import atomic_write, atomic_write_text, sha256, umask

MANIFEST = "manifest.json"
STACK = "stack.keras"
ENCODER = "encoder.keras"
CLASSIFIER = "classifier.keras"
HISTORY = "history.csv"
LOCK = ".stackae.lock"
FORMAT = 1  # bumped when a later version cannot read what this one writes
STATUSES = ("pretraining", "pretrained", "finetuning", "finetuned")
# Seeds feed stateless RNGs as int64 pairs; data options as Python ints.
MAX_INT = 2**63 - 1


def first_line(err):
    """The first line of an exception's message (whole: never cut mid-sentence)."""
    text = str(err).strip().splitlines()
    return text[0].strip() if text else type(err).__name__


# ---------------------------------------------------------------- models in files


def load_model(path):
    """keras.saving.load_model in safe mode, with a one-line RunError on a bad file."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: file not found")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many kinds for a damaged archive
        raise RunError(f"{path}: not a readable Keras model ({first_line(err)})") from None


def load_weights(model, path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        model.load_weights(path)
    except Exception as err:
        raise CheckpointError(f"{path}: damaged checkpoint ({first_line(err)})") from None


def versions():
    """Versions of everything that shaped a run's numbers, the Keras backend included."""
    import keras
    import numpy

    from stackae import __version__

    backend = keras.backend.backend()
    found = {
        "stackae": __version__,
        "keras": keras.__version__,
        "backend": backend,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        found[module] = __import__(module).__version__
    return found


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the run

_HELD = {}  # resolved run path -> file descriptor of its lock, for the locks this process holds


def release_locks():
    """Let go of every run lock this process holds (the command line does at the end)."""
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()


@dataclasses.dataclass(frozen=True)
class DataRecord:
    """What a run records about its data: enough to load the same rows again."""

    name: str
    path: str | None  # absolute path of a file source; None for a named source
    n_features: int
    n_classes: int | None
    image_shape: tuple | None
    limit: int | None
    valid_size: int | None
    label_column: str | None
    scale: bool

    @property
    def options(self):
        return {
            "limit": self.limit,
            "valid_size": self.valid_size,
            "label_column": self.label_column,
            "scale": self.scale,
        }


class Run:
    """A run directory and its manifest; every write to it is atomic.

    Open one with `Run.open(path)` (checks the manifest and every checksum) or
    make one with `Run.create(...)`. Workflows read the run through the typed
    properties below and change it through its few operations
    (`record_epoch`, `finish_layer`, `save_model`, `record_finetune_epoch`, ...);
    nothing else reads or writes the manifest's JSON.
    """

    def __init__(self, path, manifest):
        self.path = Path(path)
        self._manifest = manifest

    # ------------------------------------------------------------ making and opening

    @classmethod
    def create(cls, path, *, specs, seed, data, data_options, overwrite=False):
        """A new run in `path` (which must be new, empty, or a stackae run with `overwrite`).

        Everything that can be checked is checked before anything is written.
        With `overwrite`, the old run's manifest is replaced first, then only
        the files the old run recorded are removed: a user's own files in the
        folder, and whatever a link points to, are never touched.
        """
        path = Path(path)
        old = cls._replaceable(path, overwrite)
        manifest = {
            "format": FORMAT,
            "tool": "stackae",
            "created": now(),
            "status": "pretraining",
            "versions": versions(),
            "config": {"specs": [dataclasses.asdict(s) for s in specs], "seed": int(seed)},
            "data": _data_manifest(data, data_options),
            "layers": [
                {
                    "units": s.units,
                    "epochs_done": 0,
                    "finished": False,
                    "history": {},
                    "seconds": 0.0,
                }
                for s in specs
            ],
            "files": {},
            "outputs": [],
        }
        validate_manifest(manifest, path / MANIFEST)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, manifest)
        run.lock()  # refused if another process holds the old run
        run.save()
        if old is not None:
            old._remove_own_files()
        return run

    @classmethod
    def _replaceable(cls, path, overwrite):
        """The old run that `overwrite` will replace, or None; RunError where not allowed."""
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise RunError(f"{path}: exists and is not a directory")
        if not path.is_dir() or not any(path.iterdir()):
            return None
        if not overwrite:
            raise RunError(
                f"{path}: directory exists and is not empty; "
                "use --resume to continue it or --overwrite to replace it"
            )
        try:
            return cls.open(path, verify=False)
        except RunError as err:
            raise RunError(
                f"{path}: not a stackae run directory ({err}); refusing to overwrite it"
            ) from None

    @classmethod
    def open(cls, path, verify=True):
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory")
        file = path / MANIFEST
        if not file.is_file() or file.is_symlink():
            raise RunError(f"{path}: not a stackae run directory (no {MANIFEST})")
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise RunError(f"{file}: unreadable manifest ({first_line(err)})") from None
        validate_manifest(manifest, file)
        run = cls(path, manifest)
        if verify:
            run.verify()
        return run

    def lock(self):
        """Hold this run's lock (an advisory file lock) until `unlock` or the process ends.

        A second process on the same run is refused at once, naming the holder;
        the same process may lock a run it already holds.
        """
        key = str(self.path.resolve())
        if key in _HELD:
            return self
        file = self.path / LOCK
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RunError(f"{self.path}: in use by {holder}; wait for it to finish") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
        _HELD[key] = fd
        return self

    def unlock(self):
        fd = _HELD.pop(str(self.path.resolve()), None)
        if fd is not None:
            os.close(fd)

    def save(self):
        atomic_write_text(self.path / MANIFEST, json.dumps(self._manifest, indent=2) + "\n")

    # ------------------------------------------------------------ typed views

    @property
    def status(self):
        return self._manifest["status"]

    def set_status(self, status):
        if status not in STATUSES:
            raise ValueError(f"`status` must be one of {STATUSES}. Received: status={status!r}")
        self._manifest["status"] = status
        self.save()

    @property
    def seed(self):
        return self._manifest["config"]["seed"]

    @property
    def specs(self):
        return [LayerSpec(**spec) for spec in self._manifest["config"]["specs"]]

    @property
    def backend(self):
        return self._manifest.get("versions", {}).get("backend", "tensorflow")

    @property
    def versions(self):
        return dict(self._manifest.get("versions", {}))

    @property
    def data(self):
        d = self._manifest["data"]
        options = d.get("options", {})
        path = d.get("path")
        if path is not None and not os.path.isabs(path):
            path = str(self.path / path)  # a relative path is the run's, not the caller's
        shape = d.get("image_shape")
        return DataRecord(
            name=d["name"],
            path=path,
            n_features=d["n_features"],
            n_classes=d.get("n_classes"),
            image_shape=tuple(shape) if shape else None,
            limit=options.get("limit"),
            valid_size=options.get("valid_size"),
            label_column=options.get("label_column"),
            scale=bool(options.get("scale")),
        )

    @property
    def data_source(self):
        """What to pass to `stackae.data.load` to read this run's data again."""
        record = self.data
        return record.path or record.name

    @property
    def data_shapes(self):
        return dict(self._manifest["data"].get("shapes", {}))

    @property
    def data_origin(self):
        return self._manifest["data"].get("origin")

    def layer(self, k):
        """(epochs_done, finished, history, seconds, checkpoint) of layer k, as a LayerState."""
        entry = self._manifest["layers"][k]
        return LayerState(
            units=entry["units"],
            epochs_done=entry["epochs_done"],
            finished=entry["finished"],
            history={key: list(v) for key, v in entry["history"].items()},
            seconds=float(entry.get("seconds", 0.0)),
            checkpoint=entry.get("checkpoint"),
        )

    @property
    def n_layers(self):
        return len(self._manifest["layers"])

    @property
    def pretrained(self):
        return all(entry["finished"] for entry in self._manifest["layers"])

    def resume_point(self):
        """(layer, epochs done, checkpoint path or None) where pretraining goes on; None if done."""
        for k in range(self.n_layers):
            state = self.layer(k)
            if state.finished:
                continue
            if not state.epochs_done:
                return k, 0, None
            if state.checkpoint not in self.files:
                raise CheckpointError(f"{self.path}: layer {k + 1} checkpoint is missing")
            return k, state.epochs_done, self.file(state.checkpoint)
        return None

    def resume_conflicts(self, layers=None, seed=None, **settings):
        """Options given to resume this run that contradict it, each as 'name recorded (given)'.

        `settings` are LayerSpec fields, each None (not given), one value, or
        one value per layer.
        """
        specs = self.specs
        found = []
        if layers is not None and tuple(layers) != tuple(s.units for s in specs):
            found.append(f"layers {','.join(str(s.units) for s in specs)} (given {layers})")
        if seed is not None and seed != self.seed:
            found.append(f"seed {self.seed} (given {seed})")
        for name, value in settings.items():
            if value is None:
                continue
            values = list(value) if isinstance(value, list | tuple) else [value]
            wanted = values * len(specs) if len(values) == 1 else values
            recorded = [getattr(s, name) for s in specs]
            if wanted != recorded:
                shown = ",".join(str(v) for v in recorded)
                found.append(f"{name} {shown} (given {','.join(map(str, values))})")
        return found

    def check_finetune(self, resume, overwrite=False):
        """RunError (one line) unless fine-tuning may start here, or with `resume` continue.

        A finished or interrupted fine-tuning is started again only with `overwrite`.
        """
        record = self.finetune
        if resume:
            if record is None or record.finished:
                raise RunError(f"{self.path}: no interrupted fine-tuning to resume")
        elif record is not None and not overwrite:
            if record.finished:
                raise RunError(
                    f"{self.path}: already fine-tuned; use --overwrite to fine-tune it again"
                )
            raise RunError(
                f"{self.path}: fine-tuning stopped after epoch {record.epochs_done}; "
                "continue it with --resume or start again with --overwrite"
            )

    def finetune_conflicts(self, **settings):
        """FinetuneSpec fields given to resume fine-tuning that contradict the recorded ones."""
        recorded = dataclasses.asdict(self.finetune.spec)
        return [
            f"{name} {recorded[name]} (given {value})"
            for name, value in settings.items()
            if value != recorded[name]
        ]

    def summary_rows(self):
        """(layer, size, corruption, epochs done, final cost, seconds) for each layer."""
        rows = []
        for k, spec in enumerate(self.specs):
            state = self.layer(k)
            losses = state.history.get("loss", [])
            rows.append(
                (
                    k + 1,
                    spec.units,
                    spec.corruption,
                    state.epochs_done,
                    losses[-1] if losses else float("nan"),
                    state.seconds,
                )
            )
        return rows

    @property
    def finetune(self):
        """The fine-tuning record (spec, progress, result), or None before any fine-tuning."""
        record = self._manifest.get("finetune")
        return None if record is None else FinetuneRecord.from_manifest(record)

    # ------------------------------------------------------------ files

    def file(self, name):
        return self.path / name

    @property
    def files(self):
        """{file name: sha256} of every file the manifest vouches for (a copy)."""
        return dict(self._manifest["files"])

    def owns(self, name):
        """True for a file this run wrote (recorded with a checksum, or as an output)."""
        return name in self._manifest["files"] or name in self._manifest["outputs"]

    def write(self, name, writer, suffix=""):
        """Write file `name` atomically and record its checksum in the manifest.

        An existing recorded file is first dropped from the manifest, so a crash
        between the write and the manifest update never leaves a checksum that
        disagrees with an intact file.
        """
        if self._manifest["files"].pop(name, None) is not None:
            self.save()
        atomic_write(self.file(name), writer, suffix=suffix)
        self._manifest["files"][name] = sha256(self.file(name))
        self.save()
        return self.file(name)

    def write_output(self, name, writer, suffix=""):
        """Write a file the run owns but does not vouch for (pictures, history.csv)."""
        self._note_output(name)
        atomic_write(self.file(name), writer, suffix=suffix)
        return self.file(name)

    def output_dir(self, name):
        """A folder inside the run the run owns (TensorBoard logs)."""
        self._note_output(name)
        folder = self.file(name)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise RunError(f"{folder}: exists and is not a folder stackae made")
        folder.mkdir(exist_ok=True)
        return folder

    def _note_output(self, name):
        if name not in self._manifest["outputs"]:
            self._manifest["outputs"].append(name)
            self.save()

    def save_model(self, model, name):
        return self.write(name, lambda tmp: model.save(tmp), suffix=".keras")

    def load_model(self, name):
        return load_model(self.file(name))

    def verify(self):
        """RunError if a file the manifest vouches for is missing or changed."""
        for name, digest in self._manifest["files"].items():
            path = self.file(name)
            if path.is_symlink() or not path.is_file():
                raise RunError(f"{path}: missing (the manifest lists it)")
            if sha256(path) != digest:
                raise RunError(f"{path}: damaged (its checksum differs from {MANIFEST})")

    def _remove_own_files(self):
        # history.csv too: runs made before outputs were recorded wrote it unrecorded.
        for name in [*self._manifest["files"], *self._manifest["outputs"], HISTORY]:
            _remove(self.file(name))

    def remove_stray_checkpoints(self):
        """Checkpoints a killed run wrote but never recorded (only names stackae makes)."""
        for pattern in (
            "layer_*_epoch_*.weights.h5",
            "finetune_epoch_*.weights.h5",
            "finetune_best_*.npz",
        ):
            for path in self.path.glob(pattern):
                if path.name not in self._manifest["files"]:
                    _remove(path)

    # ------------------------------------------------------------ pretraining progress

    def layer_checkpoint(self, k, epoch):
        return f"layer_{k + 1}_epoch_{epoch}.weights.h5"

    def record_epoch(self, k, epoch, logs, seconds, save_checkpoint):
        """Layer k finished `epoch` (0-based): write its checkpoint, then record it all at once.

        `save_checkpoint(path)` writes the weights and optimizer state. The
        checkpoint gets a new name each epoch and is recorded together with the
        epoch count; the previous one is dropped from the manifest, then removed.
        """
        entry = self._manifest["layers"][k]
        previous = entry.get("checkpoint")
        name = self.layer_checkpoint(k, epoch + 1)
        atomic_write(self.file(name), save_checkpoint, suffix=".weights.h5")
        self._manifest["files"][name] = sha256(self.file(name))
        entry["epochs_done"] = epoch + 1
        entry["checkpoint"] = name
        entry["seconds"] = round(entry.get("seconds", 0.0) + seconds, 3)
        for key, value in logs.items():
            entry["history"].setdefault(key, []).append(float(value))
        self._drop([previous] if previous != name else [])
        self._write_history()

    def finish_layer(self, k, stack):
        """Layer k is trained: save the stack with it, mark it, drop its checkpoint."""
        self.save_model(stack, STACK)
        entry = self._manifest["layers"][k]
        entry["finished"] = True
        self._drop([entry.pop("checkpoint", None)])

    def _write_history(self):
        rows = ["layer,epoch,loss,val_loss"]
        for k in range(self.n_layers):
            history = self.layer(k).history
            val = history.get("val_loss", [])
            for e, loss in enumerate(history.get("loss", [])):
                rows.append(
                    f"{k + 1},{e + 1},{loss:.6f}," + (f"{val[e]:.6f}" if e < len(val) else "")
                )
        text = "\n".join(rows) + "\n"
        self.write_output(HISTORY, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    # ------------------------------------------------------------ fine-tuning progress

    def start_finetune(self, spec, n_classes):
        """A fresh fine-tuning record (any earlier one and its checkpoints are dropped)."""
        old = self._manifest.get("finetune") or {}
        stale = [old.get("checkpoint"), old.get("best_checkpoint")]
        self._manifest["finetune"] = {
            "spec": dataclasses.asdict(spec),
            "n_classes": int(n_classes),
            "epochs_done": 0,
            "finished": False,
            "seconds": 0.0,
            "history": {},
            "stopper": None,
            "valid_error": None,
            "test_error": None,
        }
        self._manifest["status"] = "finetuning"
        self._drop(stale)

    def record_finetune_epoch(self, epoch, logs, seconds, stopper, save_checkpoint, save_best):
        """Fine-tuning finished `epoch`: checkpoint, best weights (if improved), then the record.

        `save_checkpoint(path)` writes the trainer's weights and optimizer state;
        `save_best` is None or a writer of the best weights so far (an .npz).
        """
        record = self._manifest["finetune"]
        previous = record.get("checkpoint")
        name = f"finetune_epoch_{epoch + 1}.weights.h5"
        atomic_write(self.file(name), save_checkpoint, suffix=".weights.h5")
        self._manifest["files"][name] = sha256(self.file(name))
        stale = [previous] if previous not in (None, name) else []
        if save_best is not None:
            best = f"finetune_best_{epoch + 1}.npz"
            atomic_write(self.file(best), save_best, suffix=".npz")
            self._manifest["files"][best] = sha256(self.file(best))
            if record.get("best_checkpoint") not in (None, best):
                stale.append(record["best_checkpoint"])
            record["best_checkpoint"] = best
        record["checkpoint"] = name
        record["epochs_done"] = epoch + 1
        record["seconds"] = round(record.get("seconds", 0.0) + seconds, 3)
        record["stopper"] = stopper
        for key, value in logs.items():
            record["history"].setdefault(key, []).append(float(value))
        self._drop(stale)

    def finish_finetune(self, model, valid_error, test_error):
        """Save the classifier, record the errors, drop the fine-tuning checkpoints."""
        self.save_model(model, CLASSIFIER)
        record = self._manifest["finetune"]
        record.update(finished=True, valid_error=valid_error, test_error=test_error)
        stale = [record.pop("checkpoint", None), record.pop("best_checkpoint", None)]
        self._manifest["status"] = "finetuned"
        self._drop(stale)

    def _drop(self, names):
        """Save the manifest without `names` (None ignored), then remove those files."""
        names = [name for name in names if name]
        for name in names:
            self._manifest["files"].pop(name, None)
        self.save()
        for name in names:
            _remove(self.file(name))


@dataclasses.dataclass(frozen=True)
class LayerState:
    units: int
    epochs_done: int
    finished: bool
    history: dict
    seconds: float
    checkpoint: str | None


@dataclasses.dataclass(frozen=True)
class FinetuneRecord:
    spec: FinetuneSpec
    n_classes: int
    epochs_done: int
    finished: bool
    seconds: float
    history: dict
    stopper: dict | None
    checkpoint: str | None
    best_checkpoint: str | None
    valid_error: float | None
    test_error: float | None

    @classmethod
    def from_manifest(cls, record):
        return cls(
            spec=FinetuneSpec(**record["spec"]),
            n_classes=record["n_classes"],
            epochs_done=record.get("epochs_done", record.get("epochs", 0)),
            finished=record.get("finished", True),
            seconds=float(record.get("seconds", 0.0)),
            history={k: list(v) for k, v in record.get("history", {}).items()},
            stopper=record.get("stopper"),
            checkpoint=record.get("checkpoint"),
            best_checkpoint=record.get("best_checkpoint"),
            valid_error=record.get("valid_error"),
            test_error=record.get("test_error"),
        )


def _data_manifest(data, options):
    """What the manifest records about loaded data (a stackae.data.Data)."""
    name = data.name
    path = None
    if name not in ("mnist", "mnist-sample", "fashion-mnist"):
        path = os.path.abspath(name)
    return {
        "name": name,
        "path": path,
        "origin": str(data.origin),
        "n_features": int(data.n_features),
        "n_classes": data.n_classes,
        "image_shape": list(data.image_shape) if data.image_shape else None,
        "shapes": {
            split: list(part.x.shape)
            for split, part in (("train", data.train), ("valid", data.valid), ("test", data.test))
            if part is not None
        },
        "options": dict(options or {}),
    }


def _remove(path):
    """Remove a file, a link (never what it points to) or a folder stackae made."""
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # refuses a link, and never follows one inside
    else:
        path.unlink()


# ---------------------------------------------------------------- manifest checks


def _check(condition, file, what):
    if not condition:
        raise RunError(f"{file}: bad manifest: {what}")


def _is_int(value, low=None, high=MAX_INT):
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (low is None or value >= low)
        and value <= high
    )


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fields(spec_class):
    return {field.name for field in dataclasses.fields(spec_class)}


def _plain_name(name):
    """A file name inside the run directory, never a path out of it."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST, LOCK)
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def _history(value):
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(_is_number(x) for x in v)
        for k, v in value.items()
    )


def validate_manifest(manifest, file="manifest.json"):
    """Refuse (RunError, one line) anything that is not a manifest this version can read.

    Every field a verb reads is checked for its type and range here, so no
    verb meets a value it cannot use.
    """
    _check(isinstance(manifest, dict), file, "not a JSON object")
    _check(manifest.get("tool") == "stackae", file, "not written by stackae")
    fmt = manifest.get("format")
    _check(_is_int(fmt, 1), file, "no format number")
    if fmt > FORMAT:
        raise RunError(
            f"{file}: run format {fmt} comes from a newer stackae; this one reads up to {FORMAT}"
        )
    _check(manifest.get("status") in STATUSES, file, f"status is not one of {STATUSES}")
    versions = manifest.get("versions", {})
    _check(
        isinstance(versions, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items()),
        file,
        "versions",
    )
    config = manifest.get("config")
    _check(isinstance(config, dict), file, "no config")
    _check(_is_int(config.get("seed"), 0), file, "seed is not an integer in [0, 2**63)")
    specs = config.get("specs")
    _check(isinstance(specs, list) and specs, file, "no layer specs")
    for k, spec in enumerate(specs):
        _check(isinstance(spec, dict), file, f"layer {k + 1} spec is not an object")
        missing = sorted(_fields(LayerSpec) - set(spec))
        _check(not missing, file, f"layer {k + 1} spec lacks {', '.join(missing)}")
        try:
            LayerSpec(**spec)
        except (TypeError, ValueError) as err:
            raise RunError(
                f"{file}: bad manifest: layer {k + 1} spec ({first_line(err)})"
            ) from None
    layers = manifest.get("layers")
    _check(
        isinstance(layers, list) and len(layers) == len(specs), file, "layers do not match specs"
    )
    files = manifest.setdefault("files", {})
    _check(
        isinstance(files, dict)
        and all(_plain_name(k) and isinstance(v, str) for k, v in files.items()),
        file,
        "file list",
    )
    for k, (layer, spec) in enumerate(zip(layers, specs)):
        _check(isinstance(layer, dict), file, f"layer {k + 1} is not an object")
        _check(layer.get("units") == spec["units"], file, f"layer {k + 1} units")
        _check(
            _is_int(layer.get("epochs_done"), 0, spec["epochs"]),
            file,
            f"layer {k + 1} epochs_done is not a number of epochs",
        )
        _check(isinstance(layer.get("finished"), bool), file, f"layer {k + 1} finished flag")
        _check(_history(layer.get("history")), file, f"layer {k + 1} history")
        _check(_is_number(layer.get("seconds", 0.0)), file, f"layer {k + 1} seconds")
        checkpoint = layer.get("checkpoint")
        _check(
            checkpoint is None or (_plain_name(checkpoint) and checkpoint in files),
            file,
            f"layer {k + 1} checkpoint",
        )
    outputs = manifest.setdefault("outputs", [])
    _check(
        isinstance(outputs, list) and all(_plain_name(name) for name in outputs), file, "outputs"
    )
    _check_data(manifest.get("data"), file)
    if manifest.get("finetune") is not None:
        _check_finetune(manifest["finetune"], files, file)


def _check_data(data, file):
    _check(isinstance(data, dict), file, "no data record")
    _check(isinstance(data.get("name"), str) and data["name"], file, "no data name")
    _check(data.get("path") is None or isinstance(data["path"], str), file, "data path")
    _check(_is_int(data.get("n_features"), 1), file, "no data width")
    _check(data.get("n_classes") is None or _is_int(data["n_classes"], 1), file, "n_classes")
    shape = data.get("image_shape")
    _check(
        shape is None
        or (
            isinstance(shape, list)
            and len(shape) == 2
            and all(_is_int(side, 1) for side in shape)
            and shape[0] * shape[1] == data["n_features"]
        ),
        file,
        "data image_shape is not [height, width] of the data's width",
    )
    options = data.get("options", {})
    _check(isinstance(options, dict), file, "data options")
    _check(options.get("limit") is None or _is_int(options["limit"], 1), file, "data limit")
    _check(
        options.get("valid_size") is None or _is_int(options["valid_size"], 0),
        file,
        "data valid_size",
    )
    _check(
        options.get("label_column") is None or isinstance(options["label_column"], str | int),
        file,
        "data label_column",
    )
    _check(isinstance(options.get("scale", False), bool), file, "data scale")


def _check_finetune(record, files, file):
    _check(isinstance(record, dict) and isinstance(record.get("spec"), dict), file, "finetune")
    missing = sorted(_fields(FinetuneSpec) - set(record["spec"]))
    _check(not missing, file, f"finetune spec lacks {', '.join(missing)}")
    try:
        FinetuneSpec(**record["spec"])
    except (TypeError, ValueError) as err:
        raise RunError(f"{file}: bad manifest: finetune spec ({first_line(err)})") from None
    _check(_is_int(record.get("n_classes"), 2), file, "finetune n_classes")
    done = record.get("epochs_done", record.get("epochs", 0))
    _check(_is_int(done, 0, record["spec"]["epochs"]), file, "finetune epochs_done")
    _check(isinstance(record.get("finished", True), bool), file, "finetune finished flag")
    _check(_is_number(record.get("seconds", 0.0)), file, "finetune seconds")
    _check(_history(record.get("history", {})), file, "finetune history")
    for key in ("valid_error", "test_error"):
        value = record.get(key)
        _check(value is None or (_is_number(value) and 0 <= value <= 1), file, f"finetune {key}")
    for key in ("checkpoint", "best_checkpoint"):
        name = record.get(key)
        _check(name is None or (_plain_name(name) and name in files), file, f"finetune {key}")
    stopper = record.get("stopper")
    _check(
        stopper is None or (isinstance(stopper, dict) and all(isinstance(k, str) for k in stopper)),
        file,
        "finetune stopper",
    )
