"""stackae: denoising and stacked denoising autoencoders for Keras 3."""

__version__ = "0.1.0"

from stackae.autoencoder import AutoEncoder
from stackae.layers import TiedAutoEncoderLayer

__all__ = ["AutoEncoder", "TiedAutoEncoderLayer", "__version__"]
