"""Random numbers per second for masking noise inside one compiled loop, under the backend set.

    KERAS_BACKEND=tensorflow python benchmarks/noise_rate.py
    KERAS_BACKEND=jax python benchmarks/noise_rate.py

500 steps of a (20, 784) mask (the tutorial's batch) in one loop, the fastest
of 3 runs after a compiling one; prints millions of uniform numbers per second.
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from stackae.noise import corrupt  # noqa: E402

STEPS, SHAPE = 500, (20, 784)
NUMBERS = STEPS * SHAPE[0] * SHAPE[1]


def rate(fn, repeats=3):
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return NUMBERS / min(times) / 1e6


def tensorflow_rates():
    import tensorflow as tf

    def loop(draw, jit):
        @tf.function(jit_compile=jit)
        def run():
            def body(i, total):  # the sum keeps the compiler from dropping the draw
                return i + 1, total + tf.reduce_sum(draw(i))

            start = (tf.constant(0, tf.int64), tf.constant(0.0))
            return tf.while_loop(lambda i, total: i < STEPS, body, start)[1]

        return lambda: float(run())

    generator = keras.random.SeedGenerator(1)
    ones = tf.ones(SHAPE)

    def mask(jit):
        def draw(i):
            return corrupt(ones, "masking", 0.3, tf.stack([tf.constant(1, tf.int64), i]), jit=jit)

        return draw

    return {
        "keras.random.uniform (SeedGenerator), XLA": rate(
            loop(lambda i: keras.random.uniform(SHAPE, seed=generator), True)
        ),
        "stackae corrupt, XLA (ThreeFry)": rate(loop(mask(True), True)),
        "stackae corrupt, graph (Philox)": rate(loop(mask(False), False)),
    }


def jax_rates():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def run():
        def body(i, total):
            seed = jnp.stack([jnp.int32(1), i])
            return total + jnp.sum(corrupt(jnp.ones(SHAPE), "masking", 0.3, seed))

        return jax.lax.fori_loop(0, STEPS, body, jnp.float32(0))

    return {"stackae corrupt, jit (ThreeFry)": rate(lambda: float(run()))}


if __name__ == "__main__":
    backend = keras.backend.backend()
    rates = tensorflow_rates() if backend == "tensorflow" else jax_rates()
    print(json.dumps({"backend": backend, "M numbers/s": rates}))
