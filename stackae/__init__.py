"""stackae: denoising and stacked denoising autoencoders for Keras 3.

The package loads lazily (PEP 562): `import stackae` imports no backend, so
the command line and `stackae.config` start instantly; the first use of a
name below imports what it needs. stackae's Keras classes are registered for
`.keras` loading (safe mode, no custom_objects) as soon as Keras is imported,
before or after stackae.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "AutoEncoder": "stackae.autoencoder",
    "FinetuneSpec": "stackae.config",
    "LayerSpec": "stackae.config",
    "Stack": "stackae.stack",
    "TiedAutoEncoderLayer": "stackae.layers",
    "TiedConv2DAutoEncoderLayer": "stackae.conv_layer",
    "finetune": "stackae.finetuning",
    "layer_specs": "stackae.stack",
    "pretrain": "stackae.stack",
}
_SUBMODULES = ("export", "kinds", "workflows")

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"stackae.{name}")
    else:
        raise AttributeError(f"module 'stackae' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return __all__


# Modules whose classes Keras must know by name to load a stackae `.keras` file.
_SERIALIZABLE = ("stackae.layers", "stackae.conv_layer", "stackae.autoencoder", "stackae.stack")
_importing = set()  # watched modules whose code is running now


class _RegisterWithKeras(importlib.abc.MetaPathFinder):
    """An import hook: registers stackae's classes with Keras once Keras is imported.

    Keras resolves a saved class by its registered name only, so the classes
    must be registered before a file is loaded; importing them with stackae
    would import the backend at `import stackae`, which the lazy package avoids.
    The hook watches `keras` and stackae's own modules, and registers once
    Keras is loaded and no stackae module is half-imported (so any first
    import, `from stackae.layers import ...` say, works).
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras" and not name.startswith("stackae."):
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_register(module):
                _importing.add(name)
                try:
                    exec_module(module)
                finally:
                    _importing.discard(name)
                _register_when_ready()

            spec.loader.exec_module = exec_and_register
        return spec


def _register_when_ready():
    # Not while any stackae module is half-imported: its names may not exist yet.
    if _importing or "keras" not in sys.modules:
        return
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterWithKeras)]
    for module in _SERIALIZABLE:
        importlib.import_module(module)


if not any(isinstance(finder, _RegisterWithKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithKeras())
    if "keras" in sys.modules:
        _register_when_ready()
