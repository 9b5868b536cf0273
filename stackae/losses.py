"""Reconstruction costs and penalties of an autoencoder, in the tutorial's units."""

from keras import ops

from stackae import compat
from stackae.config import LOSSES

__all__ = ["LOSSES", "contraction", "cross_entropy", "kl_sparsity", "squared_error"]
__all__ += ["weight_decay"]


def cross_entropy(x, logits):
    """Per-example -sum_j [x log z + (1 - x) log(1 - z)] with z = sigmoid(logits).

    Written as softplus(a) - x a, which equals the above and never takes log(0).
    """
    return ops.sum(ops.softplus(logits) - x * logits, axis=-1)


def squared_error(x, z):
    """Per-example sum_j (x_j - z_j)^2."""
    return ops.sum(ops.square(x - z), axis=-1)


def weight_decay(kernel):
    """sum W^2 (multiplied by the L2 weight by the caller)."""
    return ops.sum(ops.square(kernel))


def kl_sparsity(h, target):
    """KL(target || mean activation) summed over hidden units; h: (batch, n_hidden)."""
    eps = 1e-7
    rho_hat = ops.clip(compat.mean(h, axis=0), eps, 1.0 - eps)  # (n_hidden,)
    return ops.sum(
        target * ops.log(target / rho_hat)
        + (1.0 - target) * ops.log((1.0 - target) / (1.0 - rho_hat))
    )


def contraction(h, kernel):
    """Mean over the batch of ||J||_F^2, J = d sigmoid(x W + b) / dx (the tutorial's cA).

    J_ij = h_j (1 - h_j) W_ij, so ||J||^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ij^2.
    """
    column_norms = ops.sum(ops.square(kernel), axis=0)  # (n_hidden,)
    return compat.mean(ops.sum(ops.square(h * (1.0 - h)) * column_norms, axis=-1))
