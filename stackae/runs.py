"""Run: the run directory and the only owner of its manifest.

A run directory holds everything one run wrote: `manifest.json` (its schema is
stackae/manifest.py), the stack, per-epoch checkpoints, the exports and
pictures. A process changes a run only while it holds the run's lock, and it
reads the manifest after taking the lock, so no process writes back a stale
copy. Every write is atomic; a file is named in the manifest (`pending`)
before it is written and recorded with its checksum once complete, so a run
killed at any moment removes only files it wrote itself. Imports no backend:
`stackae info` reads a run without starting one.
"""

import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import stat
from pathlib import Path

import numpy as np

from stackae import locks
from stackae.config import layer_shape, layer_token, parse_layers
from stackae.errors import CheckpointError, Param, RunError, first_line
from stackae.files import atomic_write, atomic_write_text, link_problem, load_model, sha256
from stackae.kinds import kind_of
from stackae.manifest import (
    FORMAT,
    LOCK,
    MANIFEST,
    STATUSES,
    Config,
    DataOptions,
    DataRecord,
    FinetuneProgress,
    Fingerprint,
    LayerProgress,
    Manifest,
    OutlierThreshold,
)

STACK = "stack.keras"
ENCODER = "encoder.keras"
CLASSIFIER = "classifier.keras"
REGRESSOR = "regressor.keras"
HISTORY = "history.csv"
SPLIT = "split.npz"
NAMED_SOURCES = ("mnist", "mnist-sample", "fashion-mnist")

__all__ = [
    "CLASSIFIER",
    "REGRESSOR",
    "ENCODER",
    "FORMAT",
    "HISTORY",
    "LOCK",
    "MANIFEST",
    "STACK",
    "STATUSES",
]
__all__ += ["Run", "first_line", "load_model", "release_locks", "validate_manifest", "versions"]


# Every name a run writes: only such a file (or folder) is ever removed by the run.
OWN_NAMES = re.compile(
    r"(stack|encoder|classifier|regressor)\.keras|split\.npz|history\.csv|reconstructions\.png"
    r"|filters_layer_[0-9]+\.png|tensorboard|layer_[0-9]+_epoch_[0-9]+\.weights\.h5"
    r"|finetune_epoch_[0-9]+\.weights\.h5|finetune_best_[0-9]+\.npz"
)


def validate_manifest(raw, file=MANIFEST):
    """The Manifest in parsed JSON `raw`; RunError (one line) where this version can't use it."""
    return Manifest.from_json(raw, file)


def release_locks():
    """Let go of every run lock this process holds (the command line does at the end)."""
    locks.release_all()


def versions():
    """Versions of everything that shaped a run's numbers, the Keras backend included."""
    import keras

    from stackae import __version__

    backend = keras.backend.backend()
    found = {
        "stackae": __version__,
        "keras": keras.__version__,
        "backend": backend,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        found[module] = __import__(module).__version__
    return found


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _size(spec):
    """A layer's size for the summary: its units (an int), or its token (convFxK)."""
    shape = layer_shape(spec)
    return shape if isinstance(shape, int) else layer_token(spec).split(",")[0]


def _layers_text(layers):
    """`--layers` as given, for a message: a tuple of sizes as before, else its tokens."""
    if all(isinstance(u, int) for u in layers):
        return f"{tuple(layers)}"
    return ",".join(layer_token(u) for u in layers)


class Run:
    """A run directory and its manifest.

    `Run.open(path)` reads a run (checking the manifest and the checksums of
    the files verbs read); `Run.open(path, write=True)` takes the run's lock
    first, so the manifest it reads is the one it may change; `Run.create`
    makes one. Workflows read the run through the typed views below and
    change it through its operations (`record_epoch`, `finish_layer`, ...);
    nothing else reads or writes the manifest.
    """

    def __init__(self, path, manifest):
        self.path = Path(path)
        self.manifest = manifest

    # ------------------------------------------------------------ making and opening

    @classmethod
    def create(cls, path, *, specs, seed, data, data_options, overwrite=False, input_shapes=None):
        """A new run in `path` (new, empty, or a stackae run with `overwrite`), locked.

        Everything that can be checked is checked before anything is written.
        With `overwrite`, the old run is locked, its manifest replaced, then
        only the files it recorded are removed: a user's own files in the
        folder, and whatever a link points to, are never touched.
        """
        path = Path(path)
        old = cls._replaceable(path, overwrite)
        if old is not None:  # a user's file where the new run writes is refused first
            old.claim(
                STACK,
                ENCODER,
                SPLIT,
                *(
                    f"layer_{k + 1}_epoch_{epoch}.weights.h5"
                    for k, spec in enumerate(specs)
                    for epoch in range(1, spec.epochs + 1)
                ),
            )
        manifest = Manifest(
            format=FORMAT,
            tool="stackae",
            created=now(),
            status="pretraining",
            versions=versions(),
            config=Config(specs=list(specs), seed=int(seed)),
            data=_data_record(data, data_options, input_shapes),
            layers=[
                LayerProgress(
                    units=kind_of(s).size(s),
                    input_shape=list(input_shapes[k]) if input_shapes else None,
                )
                for k, s in enumerate(specs)
            ],
        )
        manifest.check(path / MANIFEST)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise RunError(f"{path}: cannot make the run directory (permission denied)") from None
        locks.acquire(path)
        if old is not None:  # read again under the lock: another process may have changed it
            old = cls.open(path, write=True, verify=False)
        run = cls(path, manifest)
        run.save()
        if old is not None:
            old._remove_own_files(keep={MANIFEST})
        split = getattr(data, "split", None)
        if split is not None:
            arrays = {name: np.asarray(rows, "int64") for name, rows in split.items()}
            run.write(SPLIT, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
            run.manifest.data.split = SPLIT
            run.save()
        return run

    @classmethod
    def check_replaceable(cls, path, overwrite):
        """The old run a new one in `path` would replace (None if none); RunError if refused."""
        return cls._replaceable(Path(path), overwrite)

    @classmethod
    def _replaceable(cls, path, overwrite):
        """The old run that `overwrite` will replace, or None; RunError where not allowed."""
        problem = link_problem(path)
        if problem:
            raise RunError(f"{path}: {problem}; give another", Param("out", None))
        if path.is_symlink() and overwrite:
            raise RunError(f"{path}: is a link; refusing to replace what it points to")
        if path.exists() and not path.is_dir():
            raise RunError(f"{path}: exists and is not a directory")
        if not path.is_dir() or not any(path.iterdir()):
            return None
        if not overwrite:
            raise RunError(
                f"{path}: directory exists and is not empty; use",
                Param("resume"),
                "to continue it or",
                Param("overwrite"),
                "to replace it",
            )
        try:
            return cls.open(path, verify=False)
        except RunError as err:
            text = first_line(err)
            if "not a stackae run directory" not in text:  # said once, not twice
                text = f"{path}: not a stackae run directory ({text})"
            raise RunError(f"{text}; refusing to overwrite it") from None

    @classmethod
    def open(cls, path, write=False, verify=True):
        """The run in `path`, checked; with `write`, locked before its manifest is read."""
        path = Path(path)
        if not path.is_dir():
            problem = link_problem(path) or "no such run directory"
            raise RunError(f"{path}: {problem}")
        file = path / MANIFEST
        if not file.is_file() or file.is_symlink():
            raise RunError(f"{path}: not a stackae run directory (no {MANIFEST})")
        if write:
            locks.acquire(path)
        for attempt in range(3):
            text = _read_text(file)
            run = cls(path, validate_manifest(_parse(text, file), file))
            if not verify:
                return run
            try:
                run.verify()
                return run
            except RunError:
                # A writer may have replaced a file between our reading the manifest and
                # the file: only a manifest that did not change meanwhile is proof of damage.
                if write or attempt == 2 or _read_text(file) == text:
                    raise
        raise AssertionError("unreachable")

    def lock(self):
        """Hold this run's lock; the manifest is read again under it (it may have changed)."""
        if not locks.holds(self.path):
            locks.acquire(self.path)
            fresh = Run.open(self.path, write=True, verify=False)
            self.manifest = fresh.manifest
        return self

    def unlock(self):
        locks.release(self.path)

    def save(self):
        if not locks.holds(self.path):  # a save without the lock could undo another's
            raise RuntimeError(f"{self.path}: the manifest is written only under the run's lock")
        atomic_write_text(
            self.path / MANIFEST, json.dumps(self.manifest.to_json(), indent=2) + "\n"
        )

    # ------------------------------------------------------------ typed views

    @property
    def status(self):
        return self.manifest.status

    def set_status(self, status):
        if status not in STATUSES:
            raise ValueError(f"`status` must be one of {STATUSES}. Received: status={status!r}")
        self.manifest.status = status
        self.save()

    @property
    def seed(self):
        return self.manifest.config.seed

    def layer_size(self, k):
        """Layer k's size for a summary: its units (an int), or its token (convFxK)."""
        return _size(self.specs[k])

    @property
    def input_shape(self):
        """The shape of one example the stack reads: (n_features,), or a conv stack's images."""
        return self.manifest.input_shape

    @property
    def specs(self):
        return list(self.manifest.config.specs)

    @property
    def backend(self):
        return self.manifest.backend

    @property
    def versions(self):
        return dict(self.manifest.versions)

    @property
    def data(self):
        return self.manifest.data

    def resolve_data_path(self, record):
        """A data record's file path, a relative one taken from the run directory."""
        path = record.path
        if path is not None and not os.path.isabs(path):
            path = str(self.path / path)  # the run's, not the caller's working directory
        return path

    @property
    def data_shapes(self):
        return dict(self.data.shapes)

    @property
    def data_origin(self):
        return self.data.origin

    def split_indices(self):
        """The recorded split ({split: row indices}) of a file without its own, or None."""
        if self.data.split is None:
            return None
        path = self.checked_file(self.data.split)
        try:
            with np.load(path, allow_pickle=False) as saved:
                return {name: saved[name] for name in saved.files}
        except Exception as err:  # numpy raises many kinds for a damaged archive
            raise RunError(f"{path}: damaged split file ({first_line(err)})") from None

    def layer(self, k):
        """Layer k's progress (a copy): epochs_done, finished, history, seconds, checkpoint."""
        return dataclasses.replace(self.manifest.layers[k])

    @property
    def n_layers(self):
        return len(self.manifest.layers)

    @property
    def pretrained(self):
        return all(layer.finished for layer in self.manifest.layers)

    def resume_point(self):
        """(layer, epochs done, checkpoint path or None) where pretraining goes on; None if done."""
        for k, state in enumerate(self.manifest.layers):
            if state.finished:
                continue
            if not state.epochs_done:
                return k, 0, None
            if state.checkpoint is None:
                raise CheckpointError(f"{self.path}: layer {k + 1} checkpoint is missing")
            return k, state.epochs_done, self.checked_file(state.checkpoint)
        return None

    def resume_conflicts(self, layers=None, seed=None, **settings):
        """Options given to resume this run that contradict it, each as 'name recorded (given)'.

        `settings` are LayerSpec fields, each None (not given), one value, or
        one value per layer.
        """
        specs = self.specs
        found = []
        if layers is not None and parse_layers(layers) != tuple(layer_shape(s) for s in specs):
            recorded, text = ",".join(layer_token(s) for s in specs), _layers_text(layers)
            found.append(f"layers {recorded} (given {text})")
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

    def data_conflicts(self, record, source=None, **options):
        """Data options given to resume that differ from `record` (the data the job used)."""
        found = []
        if source is not None and not _same_source(source, self.resolve_data_path(record), record):
            found.append(f"data {record.path or record.name} (given {source})")
        recorded = dataclasses.asdict(record.options)
        for name, value in options.items():
            if value is None or name not in recorded:
                continue
            if value != recorded[name]:
                found.append(f"{name} {recorded[name]} (given {value})")
        return found

    def check_finetune(self, resume, overwrite=False):
        """RunError (one line) unless fine-tuning may start here, or with `resume` continue.

        A finished or interrupted fine-tuning is started again only with `overwrite`.
        """
        if not self.pretrained:
            raise RunError(
                f"{self.path}: pretraining is not finished; resume it with:",
                Param("resume", job="pretrain", run=self.path),
            )
        record = self.finetune
        if resume:
            if record is None or record.finished:
                raise RunError(f"{self.path}: no interrupted fine-tuning to resume")
        elif record is not None and not overwrite:
            if record.finished:
                raise RunError(
                    f"{self.path}: already fine-tuned; use",
                    Param("overwrite"),
                    "to fine-tune it again",
                )
            raise RunError(
                f"{self.path}: fine-tuning stopped after epoch {record.epochs_done}; continue it "
                "with",
                Param("resume"),
                "or start again with",
                Param("overwrite"),
            )

    def finetune_conflicts(self, **settings):
        """FinetuneSpec fields given to resume fine-tuning that contradict the recorded ones."""
        recorded = dataclasses.asdict(self.finetune.spec)
        return [
            f"{name} {recorded[name]} (given {value})"
            for name, value in settings.items()
            if name in recorded and value != recorded[name]
        ]

    def summary_rows(self):
        """(layer, size, corruption, epochs done, final cost, seconds) for each layer."""
        rows = []
        for k, spec in enumerate(self.specs):
            state = self.manifest.layers[k]
            losses = state.history.get("loss", [])
            rows.append(
                (
                    k + 1,
                    _size(spec),
                    spec.corruption,
                    state.epochs_done,
                    losses[-1] if losses else float("nan"),
                    state.seconds,
                )
            )
        return rows

    @property
    def finetune(self):
        """The fine-tuning record (a copy), or None before any fine-tuning."""
        record = self.manifest.finetune
        return None if record is None else dataclasses.replace(record)

    @property
    def finetune_data(self):
        """The data record of the fine-tuning: the data it was given, else the run's."""
        record = self.manifest.finetune
        return record.data if record is not None and record.data is not None else self.data

    @property
    def model_file(self):
        """The fine-tuned model's file name: regressor.keras, or classifier.keras.

        Runs made before regressors had a name of their own saved them as
        classifier.keras too; either is read.
        """
        return REGRESSOR if REGRESSOR in self.manifest.files else CLASSIFIER

    @property
    def outliers(self):
        """The outlier threshold `pretrain --contamination` recorded (a copy), or None."""
        record = self.manifest.outliers
        return None if record is None else dataclasses.replace(record)

    def record_outliers(self, contamination, threshold=None):
        """Record the contamination asked for, and once fitted the error threshold."""
        self.manifest.outliers = OutlierThreshold(
            contamination=contamination, threshold=None if threshold is None else float(threshold)
        )
        self.save()

    def data_record(self, data, options):
        """A DataRecord of loaded `data` and its options (as `create` records the run's)."""
        return _data_record(data, options)

    # ------------------------------------------------------------ files

    def file(self, name):
        return self.path / name

    @property
    def files(self):
        """{file name: sha256} of every file the manifest vouches for (a copy)."""
        return dict(self.manifest.files)

    def owns(self, name):
        """True for a file this run wrote (recorded with a checksum, or as an output)."""
        return name in self.manifest.files or name in self.manifest.outputs

    def claim(self, *names):
        """RunError (one line) if a file the run did not write is at one of `names`.

        The run writes over (and later removes) only files it recorded, or named
        as pending or as an output before writing them: a user's file that
        happens to bear a checkpoint's name is never taken for one.
        """
        mine = {*self.manifest.files, *self.manifest.pending, *self.manifest.outputs}
        for name in names:
            path = self.file(name)
            if name not in mine and (path.exists() or path.is_symlink()):
                raise RunError(
                    f"{path}: a file stackae did not write is where the run must write "
                    f"{name}; move it away and run again"
                )

    def refuse_output(self, path):
        """RunError (one line) if writing an output to `path` would replace a file of this run.

        `--overwrite` replaces a user's file, never the manifest, the lock or a
        file the run recorded (models, checkpoints, the split).
        """
        path = Path(path)
        try:
            same_folder = path.parent.resolve() == self.path.resolve()
        except OSError:
            return
        name = path.name
        vouched = {MANIFEST, LOCK, *self.manifest.files, *self.manifest.pending}
        if same_folder and name in vouched:
            raise RunError(
                f"{path}: a file of the run {self.path};",
                Param("overwrite"),
                "never replaces it, write elsewhere",
            )

    def checked_file(self, name):
        """The path of recorded file `name`, after checking it is there and unchanged."""
        path = self.file(name)
        digest = self.manifest.files.get(name)
        if digest is None or path.is_symlink() or not path.is_file():
            raise CheckpointError(f"{path}: missing (the manifest lists it)")
        if sha256(path) != digest:
            raise CheckpointError(f"{path}: damaged (its checksum differs from {MANIFEST})")
        return path

    def write(self, name, writer, suffix=""):
        """Write file `name` atomically and record its checksum in the manifest.

        The name goes into `pending` first (so a crash mid-write leaves a file the
        run knows is its own) and an existing recorded file is dropped from the
        manifest, so a crash between the write and the update never leaves a
        checksum that disagrees with an intact file.
        """
        self._begin_write(name)
        atomic_write(self.file(name), writer, suffix=suffix)
        self._end_write(name)
        self.save()
        return self.file(name)

    def _begin_write(self, name):
        self.claim(name)
        self.manifest.files.pop(name, None)
        if name not in self.manifest.pending:
            self.manifest.pending.append(name)
        self.save()

    def _end_write(self, name):
        self.manifest.files[name] = sha256(self.file(name))
        self.manifest.pending.remove(name)

    def write_output(self, name, writer, suffix="", replace=False):
        """Write a file the run owns but does not vouch for (pictures, history.csv).

        `replace`: the user asked (--overwrite) to replace a file of theirs there.
        """
        self._note_output(name, replace)
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

    def _note_output(self, name, replace=False):
        # Runs made before outputs were recorded wrote history.csv unrecorded.
        if name != HISTORY and not replace:
            self.claim(name)
        if name not in self.manifest.outputs:
            self.manifest.outputs.append(name)
            self.save()

    def save_model(self, model, name):
        return self.write(name, lambda tmp: model.save(tmp), suffix=".keras")

    def load_model(self, name):
        return load_model(self.file(name))

    def _checkpoints(self):
        names = {layer.checkpoint for layer in self.manifest.layers}
        if self.manifest.finetune is not None:
            names |= {self.manifest.finetune.checkpoint, self.manifest.finetune.best_checkpoint}
        return names - {None}

    def verify(self):
        """RunError if a file the manifest vouches for is missing or changed.

        Checkpoints are checked when a resume reads them (`checked_file`): a
        missing one blocks that resume only, not `info`, `evaluate` or `--overwrite`.
        """
        skip = self._checkpoints()
        for name, digest in self.manifest.files.items():
            if name in skip:
                continue
            path = self.file(name)
            if path.is_symlink() or not path.is_file():
                raise RunError(f"{path}: missing (the manifest lists it)")
            if sha256(path) != digest:
                raise RunError(f"{path}: damaged (its checksum differs from {MANIFEST})")

    def _remove_own_files(self, keep=()):
        """Remove what this run wrote: never a file whose name or content is not the run's.

        A recorded file goes only with its recorded checksum; an output or a pending
        file only with a name the run gives its files. An edited manifest cannot
        make this remove a user's file or folder.
        """
        for name, digest in self.manifest.files.items():
            path = self.file(name)
            if name in keep or not OWN_NAMES.fullmatch(name) or not path.is_file():
                continue
            if path.is_symlink() or sha256(path) == digest:
                _remove(path)
        # history.csv too: runs made before outputs were recorded wrote it unrecorded.
        for name in [*self.manifest.outputs, *self.manifest.pending, HISTORY]:
            if name not in keep and name not in self.manifest.files and OWN_NAMES.fullmatch(name):
                _remove(self.file(name))

    def remove_pending(self):
        """Files a killed process of this run began to write: named in `pending`, so its own."""
        if not self.manifest.pending:
            return
        for name in self.manifest.pending:
            if name not in self.manifest.files and OWN_NAMES.fullmatch(name):
                _remove(self.file(name))
        self.manifest.pending.clear()
        self.save()

    # ------------------------------------------------------------ pretraining progress

    def layer_checkpoint(self, k, epoch):
        return f"layer_{k + 1}_epoch_{epoch}.weights.h5"

    def record_epoch(self, k, epoch, logs, seconds, save_checkpoint, earlier=()):
        """Layer k finished `epoch` (0-based): write its checkpoint, then record it all at once.

        `save_checkpoint(path)` writes the weights and optimizer state. The
        checkpoint gets a new name each epoch and is recorded together with the
        epoch count; the previous one is dropped from the manifest, then removed.
        `earlier`: the logs of the epochs run since the last record, oldest first
        (checkpoints need not be written every epoch); `seconds` counts them too.
        """
        entry = self.manifest.layers[k]
        previous = entry.checkpoint
        name = self.layer_checkpoint(k, epoch + 1)
        self._begin_write(name)
        atomic_write(self.file(name), save_checkpoint, suffix=".weights.h5")
        self._end_write(name)
        entry.epochs_done = epoch + 1
        entry.checkpoint = name
        entry.seconds = round(entry.seconds + seconds, 3)
        for epoch_logs in [*earlier, logs]:
            for key, value in epoch_logs.items():
                entry.history.setdefault(key, []).append(float(value))
        self._drop([previous] if previous != name else [])
        self._write_history()

    def finish_layer(self, k, stack):
        """Layer k is trained: save the stack with it, mark it, drop its checkpoint."""
        self.save_model(stack, STACK)
        entry = self.manifest.layers[k]
        entry.finished = True
        previous, entry.checkpoint = entry.checkpoint, None
        self._drop([previous])

    def _write_history(self):
        rows = ["layer,epoch,loss,val_loss"]
        for k, state in enumerate(self.manifest.layers):
            val = state.history.get("val_loss", [])
            for e, loss in enumerate(state.history.get("loss", [])):
                rows.append(
                    f"{k + 1},{e + 1},{loss:.6f}," + (f"{val[e]:.6f}" if e < len(val) else "")
                )
        text = "\n".join(rows) + "\n"
        self.write_output(HISTORY, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    # ------------------------------------------------------------ fine-tuning progress

    def start_finetune(self, spec, n_classes=None, n_outputs=None, backend=None, data=None):
        """A fresh fine-tuning record; any earlier one, its checkpoints and classifier dropped.

        The old classifier goes too: an interrupted new fine-tuning must not leave
        the previous result looking like this one's.
        """
        old = self.manifest.finetune
        stale = [CLASSIFIER, REGRESSOR]
        if old is not None:
            stale += [old.checkpoint, old.best_checkpoint]
        self.manifest.finetune = FinetuneProgress(
            spec=spec,
            n_classes=None if n_classes is None else int(n_classes),
            n_outputs=None if n_outputs is None else int(n_outputs),
            epochs_done=0,
            finished=False,
            backend=backend,
            data=data,
        )
        self.manifest.status = "finetuning"
        self._drop([name for name in stale if name in self.manifest.files])

    def record_finetune_epoch(
        self, epoch, logs, seconds, stopper, save_checkpoint, save_best, earlier=()
    ):
        """Fine-tuning finished `epoch`: checkpoint, best weights (if improved), then the record.

        `save_checkpoint(path)` writes the trainer's weights and optimizer state;
        `save_best` is None or a writer of the best weights so far (an .npz).
        `earlier`: the logs of the epochs run since the last record, oldest first
        (checkpoints need not be written every epoch); `seconds` counts them too.
        """
        record = self.manifest.finetune
        previous = record.checkpoint
        name = f"finetune_epoch_{epoch + 1}.weights.h5"
        self._begin_write(name)
        atomic_write(self.file(name), save_checkpoint, suffix=".weights.h5")
        self._end_write(name)
        stale = [previous] if previous not in (None, name) else []
        if save_best is not None:
            best = f"finetune_best_{epoch + 1}.npz"
            self._begin_write(best)
            atomic_write(self.file(best), save_best, suffix=".npz")
            self._end_write(best)
            if record.best_checkpoint not in (None, best):
                stale.append(record.best_checkpoint)
            record.best_checkpoint = best
        record.checkpoint = name
        record.epochs_done = epoch + 1
        record.seconds = round(record.seconds + seconds, 3)
        record.stopper = stopper
        for epoch_logs in [*earlier, logs]:
            for key, value in epoch_logs.items():
                record.history.setdefault(key, []).append(float(value))
        self._drop(stale)

    def finish_finetune(self, model, valid_error=None, test_error=None, metrics=None):
        """Save the fine-tuned model, record the result, drop the fine-tuning checkpoints."""
        record = self.manifest.finetune
        self.save_model(model, REGRESSOR if record.spec.task == "regression" else CLASSIFIER)
        record.finished = True
        record.valid_error, record.test_error = valid_error, test_error
        record.metrics = dict(metrics or {})
        stale = [record.checkpoint, record.best_checkpoint]
        record.checkpoint = record.best_checkpoint = None
        self.manifest.status = "finetuned"
        self._drop(stale)

    def _drop(self, names):
        """Save the manifest without `names` (None ignored), then remove those files.

        Until they are removed they are named in `pending`: a process killed in
        between leaves files the next one knows are its own (and removes), not
        files a user left where the run writes.
        """
        names = [name for name in names if name]
        dropped = [name for name in names if name not in self.manifest.pending]
        for name in names:
            self.manifest.files.pop(name, None)
        self.manifest.pending.extend(dropped)
        self.save()
        for name in names:
            if OWN_NAMES.fullmatch(name):  # an edited manifest names no user's file here
                _remove(self.file(name))
        if dropped:
            for name in dropped:
                self.manifest.pending.remove(name)
            self.save()


def _read_text(file):
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"{file}: unreadable manifest ({first_line(err)})") from None


def _parse(text, file):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise RunError(f"{file}: unreadable manifest ({first_line(err)})") from None


def _same_source(given, recorded_path, record):
    if recorded_path is None:
        return given == record.name
    return os.path.abspath(given) == os.path.abspath(recorded_path)


def _data_record(data, options, input_shapes=None):
    """What the manifest records about loaded data (a stackae.data.Data) and its options."""
    name = data.name
    # A file's absolute path; None for a named source or rows given in memory.
    path = None if name in NAMED_SOURCES or name.startswith("<") else os.path.abspath(name)
    options = dict(options or {})
    if isinstance(options.get("scale"), bool | None):
        options["scale"] = "global" if options["scale"] else "none"
    known = {field.name for field in dataclasses.fields(DataOptions)}
    scaler = getattr(data, "scaler", None)
    return DataRecord(
        name=name,
        path=path,
        origin=str(data.origin),
        n_features=int(data.n_features),
        n_classes=data.n_classes,
        image_shape=tuple(data.image_shape) if data.image_shape else None,
        shapes={
            split: list(part.x.shape)
            for split, part in (("train", data.train), ("valid", data.valid), ("test", data.test))
            if part is not None
        },
        options=DataOptions(**{k: v for k, v in options.items() if k in known}),
        scaler=scaler.to_dict() if scaler is not None and scaler.kind != "none" else None,
        target_kind=getattr(data, "target_kind", None) or "classes",
        n_outputs=getattr(data, "n_outputs", None),
        columns=getattr(data, "columns", None),
        fingerprint=Fingerprint(**found) if (found := getattr(data, "fingerprint", None)) else None,
        # The stack's input shape, where it is not rows (a conv stack's images).
        input_shape=list(input_shapes[0]) if input_shapes and len(input_shapes[0]) > 1 else None,
    )


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
