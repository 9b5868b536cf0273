"""Traced programs reused across fits of the same structure: a private twin model per structure.

Tracing a new model's training and evaluation steps takes longer than a whole
fit of a few hundred rows (about 0.35 s of a 0.6 s fit on scikit-learn's
wine: benchmarks/README.md, small_fit.py). A search (`GridSearchCV`, the
folds of `cross_val_score`) fits models of one structure many times, and
each fit builds new models, so each traced again.

Within `reusing()` (the scikit-learn estimators' fits), `trainers.fit_epochs`
trains through `twin_of(model)`: a twin of `model` (the same class, config,
optimizer, compile and fit settings), made from its config the first time and
kept in a small pool afterwards, with its programs traced once. Every fit
copies all of `model`'s state (weights, seed generator states, metrics, the
optimizer's variables) into the twin, trains the twin, and copies its state
back: `model` ends exactly as its own fit would leave it, and the twin is
nobody's model (an earlier fit's results are never overwritten). Only
TensorFlow, outside any tf.distribute strategy; elsewhere `model` trains
itself.

What a traced step depends on is in the key: the model's and the optimizer's
configs (layer names, which Keras numbers per process, replaced by their
order of appearance), the XLA setting, the steps per call asked for and the
fit's group and steps per epoch. Data of another shape traces the twin's step
again, as it would any model's.
"""

import collections
import contextlib
import contextvars
import json
import threading

import keras
import numpy as np

# Idle twins kept, all structures together (the least recently used go first).
LIMIT = 16

_enabled = contextvars.ContextVar("stackae_reuse", default=False)
_pool = collections.OrderedDict()  # key -> [idle twins]
_lock = threading.Lock()
# How many fits trained a twin from the pool (reused) or a new twin (made): for tests.
counts = collections.Counter()


@contextlib.contextmanager
def reusing():
    """Within it, `trainers.fit_epochs` reuses the programs of earlier fits of one structure."""
    token = _enabled.set(True)
    try:
        yield
    finally:
        _enabled.reset(token)


def clear():
    """Drop every idle twin (and its programs, and the memory they hold)."""
    with _lock:
        _pool.clear()


@contextlib.contextmanager
def twin_of(model, **fit_settings):
    """The model to call `fit` on for `model`: within `reusing()` a twin holding `model`'s
    state, which goes back to `model` when the block ends (raised or not); else `model`.
    `fit_settings`: what else the traced step depends on (group, steps per epoch)."""
    key = None
    if _enabled.get() and _reusable(model):
        try:
            key = _key(model, fit_settings)
        except (TypeError, ValueError, NotImplementedError):
            key = None  # a config that cannot be written out: the model trains itself
    twin = None if key is None else _checkout(key)
    reused = twin is not None
    if key is not None and twin is None:
        try:
            twin = _make_twin(model)
        except (TypeError, ValueError, KeyError, AttributeError):
            twin = None  # a config that does not make the model again: it trains itself
    pairs = None if twin is None else _pairs(model, twin)
    if pairs is None:
        yield model
        return
    counts["reused" if reused else "made"] += 1
    for source, target in pairs:
        target.assign(source.value)
    finished = False
    try:
        yield twin
        finished = True
    finally:
        for target, source in pairs:
            target.assign(source.value)
        if finished:  # a twin whose fit raised may hold a half-traced program: dropped
            _checkin(key, twin)


def _reusable(model):
    if keras.backend.backend() != "tensorflow" or model.optimizer is None or model.run_eagerly:
        return False
    import tensorflow as tf

    return not tf.distribute.has_strategy()


def _key(model, fit_settings):
    """A string naming everything the model's traced steps depend on, but its variables' values."""
    optimizer = model.optimizer
    described = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": model.get_config(),
        "optimizer": [type(optimizer).__qualname__, optimizer.get_config()],
        "jit_compile": bool(model.jit_compile),
        "steps_per_execution": getattr(model, "_requested_steps_per_execution", None),
        "fit": fit_settings,
    }
    names = {}
    _collect_names(described, names)
    return json.dumps(_renamed(described, names), sort_keys=True)


def _collect_names(value, names):
    """{name: its order of appearance} for every "name" entry in a config, depth first."""
    if isinstance(value, dict):
        name = value.get("name")
        if isinstance(name, str):
            names.setdefault(name, f"#{len(names)}")
        for item in value.values():
            _collect_names(item, names)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_names(item, names)


def _renamed(value, names):
    """The config with every string that is a name replaced by its order of appearance, and
    NumPy values as lists (a functional model refers to its layers by name)."""
    if isinstance(value, dict):
        return {key: _renamed(item, names) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_renamed(item, names) for item in value]
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if value is None or isinstance(value, bool | int | float):
        return value
    return repr(value)


def _make_twin(model):
    """A model of `model`'s class and config, compiled alike, built, with its optimizer built."""
    twin = type(model).from_config(model.get_config())
    optimizer = type(model.optimizer).from_config(model.optimizer.get_config())
    steps = getattr(model, "_requested_steps_per_execution", model.steps_per_execution)
    twin.compile(optimizer=optimizer, jit_compile=model.jit_compile, steps_per_execution=steps)
    build = model.get_build_config() if model.built else None
    if build and not twin.built:
        twin.build_from_config(build)
    return twin


def _state(model):
    """Every variable a fit reads or writes: the model's, its metrics', its optimizer's."""
    if model.built and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    found, seen = [], set()
    for variable in [*model.variables, *model.metrics_variables, *model.optimizer.variables]:
        if id(variable) not in seen:
            seen.add(id(variable))
            found.append(variable)
    return found


def _pairs(model, twin):
    """[(model's variable, the twin's)], or None where the two do not match one to one."""
    if not (model.built and twin.built):
        return None
    mine, its = _state(model), _state(twin)
    if len(mine) != len(its):
        return None
    for a, b in zip(mine, its):
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            return None
    return list(zip(mine, its))


def _checkout(key):
    with _lock:
        idle = _pool.get(key)
        if not idle:
            return None
        _pool.move_to_end(key)
        return idle.pop()


def _checkin(key, twin):
    with _lock:
        _pool.setdefault(key, []).append(twin)
        _pool.move_to_end(key)
        while sum(len(idle) for idle in _pool.values()) > LIMIT:
            oldest = next(iter(_pool))
            _pool[oldest].pop(0)
            if not _pool[oldest]:
                del _pool[oldest]
