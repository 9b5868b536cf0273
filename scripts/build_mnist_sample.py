"""Build stackae/resources/mnist_sample.npz: a stratified, shuffled sample of MNIST."""

import argparse
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SOURCE = os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz")
DEFAULT_OUT = os.path.join(HERE, "..", "stackae", "resources", "mnist_sample.npz")
SEED = 20240501


def stratified(y, n, rng):
    """Indices of n rows of y with each label in proportion to its count, shuffled."""
    labels, counts = np.unique(y, return_counts=True)
    # Largest-remainder rounding so the quotas add up to exactly n.
    exact = counts * n / len(y)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(exact - quota)[::-1][: n - quota.sum()]] += 1
    picked = [
        rng.choice(np.flatnonzero(y == label), q, replace=False)
        for label, q in zip(labels, quota, strict=True)
    ]
    return rng.permutation(np.concatenate(picked))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="MNIST in Keras's npz layout")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    with np.load(args.source) as f:
        x_train, y_train = f["x_train"], f["y_train"]
        x_test, y_test = f["x_test"], f["y_test"]
    train = stratified(y_train, args.train, rng)
    test = stratified(y_test, args.test, rng)
    np.savez_compressed(
        args.out,
        x_train=x_train[train].astype(np.uint8),
        y_train=y_train[train].astype(np.uint8),
        x_test=x_test[test].astype(np.uint8),
        y_test=y_test[test].astype(np.uint8),
    )
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
