"""Small bilevel test problems with known answers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def ridge_data(n=120, n_val=80, d=8, seed=0, dtype=np.float64):
    """A well-conditioned ridge regression problem (XᵀX/n has eigenvalues in about [0.5, 2])."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    x = rng.normal(size=(n, d)) / np.sqrt(n)
    y = x @ w_true + 0.1 * rng.normal(size=n) / np.sqrt(n)
    xv = rng.normal(size=(n_val, d)) / np.sqrt(n_val)
    yv = xv @ w_true + 0.1 * rng.normal(size=n_val) / np.sqrt(n_val)
    return tuple(jnp.asarray(a, dtype) for a in (x, y, xv, yv))


def ridge_inner_loss(w, lam, x, y):
    return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)


def ridge_val_loss(w, xv, yv):
    return 0.5 * jnp.sum((xv @ w - yv) ** 2)


def ridge_hypergrad_closed_form(lam, x, y, xv, yv):
    """d/dλ of the validation loss at the ridge solution, derived by hand.

    ``w = H⁻¹Xᵀy`` with ``H = XᵀX + diag(λ)``; ``∂w/∂λ_j = -H⁻¹ e_j w_j``, so the gradient is
    ``-w ⊙ H⁻¹ ∇_w L_val``.
    """
    d = x.shape[1]
    h = x.T @ x + jnp.diag(jnp.broadcast_to(lam, (d,)))
    w = jnp.linalg.solve(h, x.T @ y)
    g = xv.T @ (xv @ w - yv)
    grad = -w * jnp.linalg.solve(h, g)
    return grad if jnp.ndim(lam) else jnp.sum(grad)


def logistic_data(n=150, n_val=100, d=5, seed=1):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    y = (x @ w_true + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    xv = rng.normal(size=(n_val, d))
    yv = (xv @ w_true + 0.5 * rng.normal(size=n_val) > 0).astype(np.float64)
    return tuple(jnp.asarray(a, jnp.float64) for a in (x, y, xv, yv))


def logistic_inner_loss(w, log_lam, x, y):
    logits = x @ w
    nll = jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)
    return nll + 0.5 * jnp.exp(log_lam) * jnp.sum(w**2)


def logistic_val_loss(w, xv, yv):
    logits = xv @ w
    return jnp.mean(jnp.logaddexp(0.0, logits) - yv * logits)


def rel_err(a, b):
    a = jnp.ravel(jnp.asarray(a))
    b = jnp.ravel(jnp.asarray(b))
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


tree_ravel = lambda t: jnp.concatenate([jnp.ravel(v) for v in jax.tree_util.tree_leaves(t)])
