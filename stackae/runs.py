"""The run directory: manifest, atomic checkpoints, and what is needed to resume."""

import datetime
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

import keras

MANIFEST = "manifest.json"
STACK = "stack.keras"
ENCODER = "encoder.keras"
CLASSIFIER = "classifier.keras"
HISTORY = "history.csv"
FORMAT = 1  # bumped when a later version cannot read what this one writes


class RunError(Exception):
    """A run directory that cannot be used; str() is one line naming the problem."""


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write, suffix=""):
    """Call write(tmp_path), fsync it, then rename it over `path`.

    A crash (or a full disk) at any moment leaves either the old file or the
    new one, never half of one. `suffix` keeps extensions Keras insists on.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def load_model(path):
    """keras.saving.load_model in safe mode, with a one-line RunError on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: file not found")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many kinds for a damaged archive
        raise RunError(f"{path}: not a readable Keras model ({_first_line(err)})") from None


def load_weights(model, path):
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        model.load_weights(path)
    except Exception as err:
        raise RunError(f"{path}: damaged checkpoint ({_first_line(err)})") from None


def _first_line(err):
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def versions():
    import numpy
    import tensorflow as tf

    from stackae import __version__

    return {
        "stackae": __version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Run:
    """A run directory and its manifest.json; every write to it is atomic."""

    def __init__(self, path, manifest):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def create(cls, path, manifest, overwrite=False):
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"{path}: exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise RunError(
                    f"{path}: directory exists and is not empty; "
                    "use --resume to continue it or --overwrite to replace it"
                )
            if not (path / MANIFEST).is_file():
                raise RunError(f"{path}: not a stackae run directory; refusing to overwrite it")
            for child in path.iterdir():
                _remove(child)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, {"format": FORMAT, "tool": "stackae", "created": now(), **manifest})
        run.save()
        return run

    @classmethod
    def open(cls, path):
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory")
        file = path / MANIFEST
        if not file.is_file():
            raise RunError(f"{path}: not a stackae run directory (no {MANIFEST})")
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunError(f"{file}: unreadable manifest ({_first_line(err)})") from None
        validate_manifest(manifest, file)
        run = cls(path, manifest)
        run.verify()
        return run

    def save(self):
        atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")

    def file(self, name):
        return self.path / name

    @property
    def files(self):
        """{file name: sha256} of every file the manifest vouches for."""
        return self.manifest.setdefault("files", {})

    def write(self, name, writer, suffix=""):
        """Write file `name` atomically and record its checksum in the manifest.

        An existing recorded file is first dropped from the manifest, so a crash
        between the write and the manifest update never leaves a checksum that
        disagrees with an intact file.
        """
        if self.files.pop(name, None) is not None:
            self.save()
        atomic_write(self.file(name), writer, suffix=suffix)
        self.files[name] = sha256(self.file(name))
        self.save()
        return self.file(name)

    def save_model(self, model, name):
        return self.write(name, lambda tmp: model.save(tmp), suffix=".keras")

    def save_weights(self, model, name):
        return self.write(name, lambda tmp: model.save_weights(tmp), suffix=".weights.h5")

    def forget(self, name):
        """Drop a file from the manifest, then from the disk."""
        if self.files.pop(name, None) is not None:
            self.save()
        self.file(name).unlink(missing_ok=True)

    def verify(self):
        """RunError if a file the manifest vouches for is missing or changed."""
        for name, digest in self.files.items():
            path = self.file(name)
            if not path.is_file():
                raise RunError(f"{path}: missing (the manifest lists it)")
            if sha256(path) != digest:
                raise RunError(f"{path}: damaged (its checksum differs from {MANIFEST})")

    def load_model(self, name):
        return load_model(self.file(name))

    def load_weights(self, model, name):
        return load_weights(model, self.file(name))

    @property
    def layers(self):
        return self.manifest["layers"]

    def layer_checkpoint(self, k, epoch):
        return f"layer_{k + 1}_epoch_{epoch}.weights.h5"

    def remove_stray_checkpoints(self):
        """Checkpoints a killed run wrote but never recorded."""
        for path in self.path.glob("layer_*_epoch_*.weights.h5"):
            if path.name not in self.files:
                path.unlink()


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove(child):
    if child.is_dir():
        for sub in child.iterdir():
            _remove(sub)
        child.rmdir()
    else:
        child.unlink()


def _check(condition, file, what):
    if not condition:
        raise RunError(f"{file}: bad manifest: {what}")


def validate_manifest(manifest, file="manifest.json"):
    """Refuse (RunError) anything that is not a manifest this version can read."""
    _check(isinstance(manifest, dict), file, "not a JSON object")
    _check(manifest.get("tool") == "stackae", file, "not written by stackae")
    fmt = manifest.get("format")
    _check(isinstance(fmt, int) and not isinstance(fmt, bool), file, "no format number")
    if fmt > FORMAT:
        raise RunError(
            f"{file}: run format {fmt} comes from a newer stackae; this one reads up to {FORMAT}"
        )
    config = manifest.get("config")
    _check(isinstance(config, dict), file, "no config")
    specs = config.get("specs")
    _check(isinstance(specs, list) and specs, file, "no layer specs")
    _check(isinstance(config.get("seed"), int), file, "seed is not an integer")
    layers = manifest.get("layers")
    _check(
        isinstance(layers, list) and len(layers) == len(specs), file, "layers do not match specs"
    )
    for k, layer in enumerate(layers):
        _check(isinstance(layer, dict), file, f"layer {k + 1} is not an object")
        _check_spec(specs[k], layer, k, file)
        done = layer.get("epochs_done")
        _check(
            isinstance(done, int) and 0 <= done <= _int(specs[k].get("epochs")),
            file,
            f"layer {k + 1} epochs_done is not a number of epochs",
        )
        _check(isinstance(layer.get("finished"), bool), file, f"layer {k + 1} finished flag")
    data = manifest.get("data")
    _check(
        isinstance(data, dict) and isinstance(data.get("n_features"), int), file, "no data width"
    )
    _check(isinstance(data.get("name"), str), file, "no data name")
    _check(isinstance(data.get("options", {}), dict), file, "data options")
    _check(isinstance(manifest.get("status"), str), file, "no status")
    files = manifest.get("files", {})
    _check(
        isinstance(files, dict)
        and all(isinstance(v, str) and _plain_name(k) for k, v in files.items()),
        file,
        "file list",
    )


def _plain_name(name):
    """A file name inside the run directory, never a path out of it."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
    )


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_spec(spec, layer, k, file):
    _check(isinstance(spec, dict), file, f"layer {k + 1} spec is not an object")
    units = spec.get("units")
    _check(_int(units) > 0 and layer.get("units") == units, file, f"layer {k + 1} units")
    _check(_int(spec.get("epochs")) >= 1, file, f"layer {k + 1} epochs")
    _check(_number(spec.get("corruption")), file, f"layer {k + 1} corruption")
    history = layer.get("history")
    _check(
        isinstance(history, dict)
        and all(isinstance(v, list) and all(map(_number, v)) for v in history.values()),
        file,
        f"layer {k + 1} history",
    )
    _check(_number(layer.get("seconds", 0.0)), file, f"layer {k + 1} seconds")


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
