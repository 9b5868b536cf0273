"""stackae: denoising and stacked denoising autoencoders for Keras 3."""

__version__ = "0.1.0"

from stackae import export  # noqa: E402
from stackae.autoencoder import AutoEncoder  # noqa: E402
from stackae.config import FinetuneSpec, LayerSpec  # noqa: E402
from stackae.finetune import finetune  # noqa: E402
from stackae.layers import TiedAutoEncoderLayer  # noqa: E402
from stackae.stack import Stack, layer_specs, pretrain  # noqa: E402

__all__ = [
    "AutoEncoder",
    "FinetuneSpec",
    "LayerSpec",
    "Stack",
    "TiedAutoEncoderLayer",
    "__version__",
    "export",
    "finetune",
    "layer_specs",
    "pretrain",
]
