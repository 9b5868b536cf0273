"""Corruption of the input of a denoising autoencoder: masking, Gaussian, salt-and-pepper."""

import tensorflow as tf

NOISE_KINDS = ("masking", "gaussian", "salt-and-pepper")


def _uniform(shape, seed, dtype, jit):
    # keras.random draws with TensorFlow's "auto_select" algorithm, which runs at
    # about 3 M numbers/s inside an XLA step on CPU (measured, see NOTES.md);
    # ThreeFry under XLA and Philox outside it run at 230-500 M/s.
    alg = "threefry" if jit else "philox"
    return tf.random.stateless_uniform(shape, seed=seed, dtype=dtype, alg=alg)


def _normal(shape, seed, dtype, jit):
    alg = "threefry" if jit else "philox"
    return tf.random.stateless_normal(shape, seed=seed, dtype=dtype, alg=alg)


def corrupt(x, kind, level, seed, jit=False, part=(0, 1)):
    """Return a corrupted copy of `x`.

    kind "masking": each input is set to 0 with probability `level`, the rest
    are kept unscaled (the tutorial's binomial mask). "gaussian": adds
    `level` * N(0, 1). "salt-and-pepper": each input is set, with probability
    `level`, to 0 or 1 with equal chance. `seed` is a stateless seed
    (shape [2] integer tensor): the same seed gives the same noise.
    `jit` says whether the caller is XLA-compiled, which picks the RNG.

    `part=(i, n)`: `x` is slice i of a batch split into n equal slices (one per
    replica under tf.distribute); the noise drawn is slice i of the noise of the
    whole batch, so it does not depend on how many replicas share the batch.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"Unknown noise kind. Expected one of {NOISE_KINDS}. Received: {kind!r}")
    if level == 0:
        return x
    index, count = part
    rows = tf.shape(x)[0]
    shape = tf.concat([[rows * count], tf.shape(x)[1:]], axis=0)

    def mine(noise):  # (rows, ...) of the whole batch's (rows * count, ...)
        return noise if count == 1 else noise[index * rows : (index + 1) * rows]

    if kind == "gaussian":
        return x + tf.cast(level, x.dtype) * mine(_normal(shape, seed, x.dtype, jit))
    u = mine(_uniform(shape, seed, x.dtype, jit))
    if kind == "masking":
        return tf.where(u < level, tf.zeros_like(x), x)
    # salt-and-pepper: u < level/2 -> 0, level/2 <= u < level -> 1.
    salt = tf.where(u < level / 2, tf.zeros_like(x), tf.ones_like(x))
    return tf.where(u < level, salt, x)
