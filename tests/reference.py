"""The tutorial's dA equations in plain NumPy: the independent reference for the tests."""

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def forward(x_tilde, W, b, b_prime):
    h = sigmoid(x_tilde @ W + b)
    z = sigmoid(h @ W.T + b_prime)
    return h, z


def cross_entropy_cost(x, x_tilde, W, b, b_prime):
    _, z = forward(x_tilde, W, b, b_prime)
    return np.mean(-np.sum(x * np.log(z) + (1 - x) * np.log(1 - z), axis=1))


def squared_error_cost(x, x_tilde, W, b, b_prime):
    _, z = forward(x_tilde, W, b, b_prime)
    return np.mean(np.sum((x - z) ** 2, axis=1))


def penalty(x_tilde, W, b, l2=0.0, beta=0.0, rho=0.05, lam=0.0):
    h = sigmoid(x_tilde @ W + b)
    total = l2 * np.sum(W**2)
    rho_hat = h.mean(axis=0)
    total += beta * np.sum(
        rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    )
    # Contractive: the Jacobian of each example, built element by element.
    jac = (h * (1 - h))[:, None, :] * W[None, :, :]  # (batch, n_visible, n_hidden)
    total += lam * np.mean(np.sum(jac**2, axis=(1, 2)))
    return total


def numeric_grad(f, params, eps=1e-6):
    """Central differences of f with respect to each array in params (float64)."""
    grads = []
    for p in params:
        g = np.zeros_like(p)
        it = np.nditer(p, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = p[i]
            p[i] = old + eps
            up = f()
            p[i] = old - eps
            down = f()
            p[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def gradients(x, x_tilde, W, b, b_prime, loss="cross-entropy", l2=0.0, beta=0.0, rho=0.05, lam=0.0):
    """Hand-derived gradients of the mean cost (+ penalties) w.r.t. (W, b, b')."""
    n = x.shape[0]
    h, z = forward(x_tilde, W, b, b_prime)
    if loss == "cross-entropy":
        d_az = (z - x) / n  # d/da of softplus(a) - x a, averaged over the batch
    else:
        d_az = 2 * (z - x) * z * (1 - z) / n
    d_h = d_az @ W  # (batch, n_hidden)
    dW = d_az.T @ h  # decoder use of W: (n_visible, n_hidden)
    d_bp = d_az.sum(axis=0)
    if beta:
        rho_hat = h.mean(axis=0)
        d_h = d_h + beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat)) / n
    if lam:
        s = h * (1 - h)
        c = np.sum(W**2, axis=0)
        d_h = d_h + lam * 2 * s * (1 - 2 * h) * c / n
        dW = dW + lam * 2 * W * np.mean(s**2, axis=0)
    if l2:
        dW = dW + 2 * l2 * W
    d_ah = d_h * h * (1 - h)
    dW = dW + x_tilde.T @ d_ah
    return dW, d_ah.sum(axis=0), d_bp
