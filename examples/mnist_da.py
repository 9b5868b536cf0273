"""Reproduce the deeplearning.net dA tutorial: 784-500 on MNIST at 0% and 30% corruption.

    python examples/mnist_da.py [--data mnist] [--epochs 15] [--out DIR]

`--data` takes what `stackae pretrain --data` takes: `mnist` (from
STACKAE_MNIST=/path/to/mnist.npz, Keras's cache, or a download), or a path.

Prints the tutorial's per-epoch costs and times and writes the first 100
filters of each model as `filters_corruption_0.png` / `filters_corruption_30.png`.
"""

import argparse
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import stackae  # noqa: E402
from stackae import data  # noqa: E402
from stackae.images import save_filters  # noqa: E402

# The tutorial's settings (dA.py, test_dA).
N_TRAIN = 50_000
N_HIDDEN = 500
LEARNING_RATE = 0.1
BATCH_SIZE = 20
SEED = 123
CORRUPTIONS = ((0.0, "no corruption", 0), (0.3, "30% corruption", 30))


def load_train(source, limit=None):
    """The tutorial's training set: the first 50,000 rows of x_train, in order, as float32."""
    split = data.load(source, valid_size=10_000 if source == "mnist" else 0)
    x = split.train.x[:N_TRAIN]
    if limit is not None:
        x = x[:limit]
    # The tutorial's mnist.pkl.gz holds uint8 / 256 (not / 255): with / 256 the
    # costs match its printout; / 255 gives slightly lower ones (about 62.39
    # instead of 63.29 at epoch 0), only because the pixels are a little larger.
    return (np.asarray(x, dtype="float64") * (255 / 256)).astype("float32")


def tutorial_kernel(n_visible, n_hidden):
    """W as the tutorial draws it: numpy RandomState(123), uniform +-4 sqrt(6 / (n_h + n_v))."""
    numpy_rng = np.random.RandomState(SEED)
    # test_dA seeds its Theano noise stream from this generator first
    # (`RandomStreams(rng.randint(2 ** 30))`), so W comes from the draws after it.
    numpy_rng.randint(2**30)
    bound = 4 * math.sqrt(6.0 / (n_hidden + n_visible))
    return numpy_rng.uniform(low=-bound, high=bound, size=(n_visible, n_hidden)).astype("float32")


class PrintCost(keras.callbacks.Callback):
    """Prints `Training epoch N, cost C` after each epoch, as the tutorial does."""

    def on_epoch_end(self, epoch, logs=None):
        # %.12g is how the tutorial's Python 2 printed a float (63.2891694201);
        # the loss here is a float32 mean, so only about 7 of the digits mean anything.
        print(f"Training epoch {epoch}, cost {logs['loss']:.12g}", flush=True)


def train(x, corruption, epochs, tutorial_init):
    model = stackae.AutoEncoder(N_HIDDEN, corruption=corruption, seed=SEED)
    model.build((None, x.shape[1]))
    if tutorial_init:
        model.layer.kernel.assign(tutorial_kernel(x.shape[1], N_HIDDEN))
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    model.fit(
        x,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[PrintCost()],
    )
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default="mnist",
        help="mnist (STACKAE_MNIST, Keras's cache or a download), or a path.",
    )
    parser.add_argument("--epochs", type=int, default=15, help="Epochs per model.")
    parser.add_argument("--out", default=".", help="Folder for the filter PNGs.")
    parser.add_argument("--limit", type=int, default=None, help="Train on the first N rows only.")
    parser.add_argument(
        "--tutorial-init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Draw W with numpy RandomState(123) like the tutorial, to match its costs.",
    )
    args = parser.parse_args(argv)

    x = load_train(args.data, args.limit)
    os.makedirs(args.out, exist_ok=True)
    for corruption, label, percent in CORRUPTIONS:
        start = time.perf_counter()
        model = train(x, corruption, args.epochs, args.tutorial_init)
        minutes = (time.perf_counter() - start) / 60.0
        print(f"The {label} code ran for {minutes:.2f}m", flush=True)
        path = os.path.join(args.out, f"filters_corruption_{percent}.png")
        save_filters(model.layer.kernel.numpy(), path, image_shape=(28, 28))


if __name__ == "__main__":
    main()
