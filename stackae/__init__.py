"""stackae: denoising and stacked denoising autoencoders for Keras 3.

The package loads lazily (PEP 562): `import stackae` imports no backend, so
the command line and `stackae.config` start instantly; the first use of a
name below imports what it needs.
"""

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "AutoEncoder": "stackae.autoencoder",
    "FinetuneSpec": "stackae.config",
    "LayerSpec": "stackae.config",
    "Stack": "stackae.stack",
    "TiedAutoEncoderLayer": "stackae.layers",
    "finetune": "stackae.finetune",
    "layer_specs": "stackae.stack",
    "pretrain": "stackae.stack",
}
_SUBMODULES = ("export",)

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
