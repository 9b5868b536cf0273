"""Corruption of the input of a denoising autoencoder: masking, Gaussian, salt-and-pepper."""

import keras
from keras import ops

from stackae.config import NOISE_KINDS

__all__ = ["NOISE_KINDS", "corrupt"]


def corrupt(x, kind, level, seed, jit=False, part=(0, 1)):
    """Return a corrupted copy of `x`.

    kind "masking": each input is set to 0 with probability `level`, the rest
    are kept unscaled (the tutorial's binomial mask). "gaussian": adds
    `level` * N(0, 1). "salt-and-pepper": each input is set, with probability
    `level`, to 0 or 1 with equal chance. `seed` is a stateless seed, the pair
    (seed, step) as a shape-[2] integer tensor: the same pair gives the same noise.
    `jit` says whether the caller is XLA-compiled, which picks TensorFlow's RNG
    (JAX always draws with ThreeFry, PyTorch with Philox keyed by the pair).

    `part=(i, n)`: `x` is slice i of a batch split into n equal slices (one per
    replica under tf.distribute); the noise drawn is slice i of the noise of the
    whole batch, so it does not depend on how many replicas share the batch.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"Unknown noise kind. Expected one of {NOISE_KINDS}. Received: {kind!r}")
    if level == 0:
        return x
    draw = _DRAWS[keras.backend.backend()]
    index, count = part

    def noise(distribution):  # this slice's (rows, ...) of the whole batch's (rows * count, ...)
        whole = draw(distribution, x, count, seed, jit)
        if count == 1:
            return whole
        rows = ops.shape(x)[0]
        return whole[index * rows : (index + 1) * rows]

    if kind == "gaussian":
        return x + ops.cast(level, x.dtype) * noise("normal")
    u = noise("uniform")
    if kind == "masking":
        return ops.where(u < level, ops.zeros_like(x), x)
    # salt-and-pepper: u < level/2 -> 0, level/2 <= u < level -> 1.
    salt = ops.where(u < level / 2, ops.zeros_like(x), ops.ones_like(x))
    return ops.where(u < level, salt, x)


def _tensorflow_draw(distribution, x, count, seed, jit):
    import tensorflow as tf

    # keras.random draws with TensorFlow's "auto_select" algorithm, about 2-3 M
    # numbers/s inside an XLA step on CPU; ThreeFry under XLA and Philox outside
    # it run at 220-410 M/s (benchmarks/README.md, "Measured facts").
    alg = "threefry" if jit else "philox"
    shape = tf.concat([[tf.shape(x)[0] * count], tf.shape(x)[1:]], axis=0)
    sample = tf.random.stateless_normal if distribution == "normal" else tf.random.stateless_uniform
    return sample(shape, seed=seed, dtype=x.dtype, alg=alg)


def _jax_draw(distribution, x, count, seed, jit):
    import jax

    # The pair (seed, step) is the ThreeFry key itself: no state, the same pair the same noise.
    key = jax.random.wrap_key_data(ops.cast(seed, "uint32"), impl="threefry2x32")
    shape = (x.shape[0] * count, *x.shape[1:])
    sample = jax.random.normal if distribution == "normal" else jax.random.uniform
    return sample(key, shape, dtype=x.dtype)


def _torch_draw(distribution, x, count, seed, jit):
    import numpy as np
    import torch

    # Keras's torch SeedGenerator folds its two seeds into one by addition, and a
    # CPU torch.Generator keeps 32 bits of its seed: (seed, step) pairs would share
    # streams. Philox keyed by the pair itself (two 64-bit words) gives each pair
    # a stream of its own, as ThreeFry does under JAX.
    key = np.asarray(keras.ops.convert_to_numpy(seed), dtype=np.int64).astype(np.uint64)
    generator = np.random.Generator(np.random.Philox(key=key))
    shape = (int(x.shape[0]) * count, *(int(d) for d in x.shape[1:]))
    dtype = np.float64 if x.dtype == torch.float64 else np.float32
    if distribution == "normal":
        sample = generator.standard_normal(shape, dtype=dtype)
    else:
        sample = generator.random(shape, dtype=dtype)
    return torch.from_numpy(sample).to(device=x.device, dtype=x.dtype)


_DRAWS = {"tensorflow": _tensorflow_draw, "jax": _jax_draw, "torch": _torch_draw}
