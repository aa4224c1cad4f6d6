"""The model pool of Algorithm 1: ``m`` partially trained models.

Each iteration one pool model is the linearisation point / inner starting point (moved first by
its own optimizer's momentum, :meth:`ModelPool.drifted`, as the released code); afterwards it
takes, from its unmoved weights, between 1 and ``max_steps`` standard-dynamics training steps
(MSE on the current support set, the number drawn uniformly), and a model that has taken ``K``
steps in all is re-initialised. Every model starts fresh (age 0). These are the released code's
choices (``run_rcig``: ``n_max_steps_pool = 16``, i.e. 1–15 steps, Adam 5e-5); the paper's
Algorithm 1 writes one step per selection, which is ``max_steps=1``. All of it is a pytree of
stacked arrays, so it lives inside the jitted step.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray

from bilevel import optax_step
from distillation._checks import check_int
from distillation._models import ConvNet
from distillation._networks import Partitioned, map_batch

ModelFactory = Callable[[PRNGKeyArray], ConvNet]


class PoolState(eqx.Module):
    """Stacked models (leading axis ``m``), their optimizer states, and their ages in steps."""

    models: ConvNet
    opt_states: optax.OptState
    ages: Array


class ModelPool(eqx.Module):
    """How to build, train and renew pool models (the state is a separate :class:`PoolState`).

    Args:
        make_model: ``key -> ConvNet`` (softplus activation, as used in distillation).
        size: ``m``.
        reset_every: ``K``, steps after which a model is re-initialised.
        optimizer: optax optimizer of the standard-dynamics training step.
        max_steps: training steps per selection are drawn uniformly from ``1 … max_steps``.
        unroll: ``False`` (the default, ``None``): a loop of exactly the drawn count. ``True``:
            the ``max_steps`` steps as straight-line code, each applied only when it is within
            the drawn count (all ``max_steps`` computed: ~2× the work on average at 15); the
            default on CPU until 2026-12-05, when loops ran XLA:CPU's convolution gradients
            ~20× slower (``benchmarks/cpu_loops.py``).
        forward_vjp: the loop's convolution gradients as forward-layout convolutions
            (:func:`~distillation._models.conv2d_forward_vjp`), which XLA:CPU runs fast inside a
            loop; the same values to float rounding. ``None``: on CPU only (an accelerator's
            library has its own gradient kernels). Not used by the straight-line steps.
    """

    make_model: ModelFactory = eqx.field(static=True)
    size: int = eqx.field(static=True)
    reset_every: int = eqx.field(static=True)
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    max_steps: int = eqx.field(default=15, static=True)
    unroll: bool | None = eqx.field(default=None, static=True)
    forward_vjp: bool | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        for name in ("size", "reset_every", "max_steps"):
            check_int("ModelPool", name, getattr(self, name))

    def _fresh(self, key):
        model = self.make_model(key)
        return model, self.optimizer.init(model)

    def init(self, *, key: PRNGKeyArray) -> PoolState:
        models, opt_states = jax.vmap(self._fresh)(jax.random.split(key, self.size))
        return PoolState(models, opt_states, jnp.zeros((self.size,), jnp.int32))

    def model(self, state: PoolState, index: Array) -> ConvNet:
        return jax.tree_util.tree_map(lambda a: a[index], state.models)

    def drifted(self, state: PoolState, index: Array, steps: int) -> ConvNet:
        """Model ``index`` after ``steps`` updates of its own optimizer with a **zero**
        gradient, its state left as it was.

        This is where the released code takes a meta-step's inner solve and implicit gradient:
        its inner solve continues the pool model's optimizer state, in which the network
        weights get no gradient (they are the linearisation point) but Adam, its moments
        non-zero from the pool's training, still steps them ``lr · m̂/(√v̂ + ε)`` at every
        inner step (``docs/fidelity.md`` row 32). A fresh model (moments zero) does not move.
        """
        model = self.model(state, index)
        opt_state = jax.tree_util.tree_map(lambda a: a[index], state.opt_states)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, model)  # as `train_step`'s gradients

        def one(_, carry):
            return optax_step(self.optimizer, zeros, carry[1], carry[0])

        model, _ = jax.lax.fori_loop(0, steps, one, (model, opt_state))
        return model

    def drift_path(self, state: PoolState, index: Array, steps: int) -> tuple[ConvNet, ConvNet]:
        """``(path, final)``: model ``index`` after ``0 … steps − 1`` zero-gradient updates of
        its own optimizer (stacked, leading axis ``steps``) and after ``steps``
        (:meth:`drifted`). The released code's inner step ``k`` linearises at ``path[k]``
        (its inner solve moves the weights one pool-Adam step per inner step); the
        meta-gradient is taken at ``final``."""
        model = self.model(state, index)
        opt_state = jax.tree_util.tree_map(lambda a: a[index], state.opt_states)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, model)

        def one(carry, _):
            return optax_step(self.optimizer, zeros, carry[1], carry[0]), carry[0]

        (final, _), path = jax.lax.scan(one, (model, opt_state), None, length=steps)
        return path, final

    def train_step(
        self,
        state: PoolState,
        index: Array,
        images: Array | Partitioned,
        labels: Array,
        *,
        key: PRNGKeyArray,
    ) -> tuple[PoolState, Array]:
        """Train model ``index`` for a drawn number of MSE steps on ``(images, labels)``; renew
        it once it has taken ``K`` steps in all.

        ``images`` may be a :class:`~distillation.Partitioned` batch (``labels`` in the
        same order: stored part first).

        Returns:
            The new state and the training loss before the first step.
        """
        model = self.model(state, index)
        opt_state = jax.tree_util.tree_map(lambda a: a[index], state.opt_states)
        k_count, k_fresh = jax.random.split(key)
        count = jax.random.randint(k_count, (), 1, self.max_steps + 1, dtype=state.ages.dtype)

        if model.has_running_stats and isinstance(images, Partitioned):
            raise ValueError(
                "ModelPool.train_step: a batch-normalised pool model trains on the whole support "
                "set as one batch (its statistics are the batch's), so it cannot take a "
                "Partitioned batch (subsampling with n_subset < |S|)."
            )

        unroll = bool(self.unroll)
        forward_vjp = not unroll and (
            jax.default_backend() == "cpu" if self.forward_vjp is None else self.forward_vjp
        )

        def loss_fn(m):
            # ½ mean over images and classes (the released code's Σ ½(f − y)² / (N·K)).
            if m.has_running_stats:
                # Training mode, as the released pool: the batch's statistics, and the
                # running ones moved towards them.
                outputs, moved = m.train_forward(images, forward_vjp=forward_vjp)
            else:
                outputs, moved = map_batch(lambda xb: m(xb, forward_vjp=forward_vjp), images), m
            return 0.5 * jnp.mean((outputs - labels) ** 2), moved

        def one_step(carry):
            m, o = carry
            (loss, moved), grads = jax.value_and_grad(loss_fn, has_aux=True)(m)
            m, o = optax_step(self.optimizer, grads, o, m)
            if m.has_running_stats:
                # The stepped parameters with the statistics of this step's batch (the running
                # statistics get no gradient, so the optimizer left them as they were).
                m = eqx.tree_at(lambda t: t.body.batch_norms, m, _with_stats(m, moved))
            return (m, o), loss

        (model, opt_state), loss = one_step((model, opt_state))
        if unroll:
            for i in range(1, self.max_steps):
                stepped, _ = one_step((model, opt_state))
                take = i < count
                model, opt_state = jax.tree_util.tree_map(
                    lambda new, old, t=take: jnp.where(t, new, old), stepped, (model, opt_state)
                )
        else:
            model, opt_state = jax.lax.fori_loop(
                1, count, lambda _, c: one_step(c)[0], (model, opt_state)
            )
        age = state.ages[index] + count
        renew = age >= self.reset_every
        fresh_model, fresh_opt = self._fresh(k_fresh)
        model, opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(renew, new, old),
            (fresh_model, fresh_opt),
            (model, opt_state),
        )
        put = lambda stacked, one: jax.tree_util.tree_map(
            lambda s, o: s.at[index].set(o), stacked, one
        )
        new_state = PoolState(
            put(state.models, model),
            put(state.opt_states, opt_state),
            state.ages.at[index].set(jnp.where(renew, 0, age)),
        )
        return new_state, loss


def _with_stats(stepped: ConvNet, moved: ConvNet):
    """``stepped``'s batch-norm parameters with ``moved``'s running statistics."""
    return tuple(
        eqx.tree_at(lambda b: (b.mean, b.var), p, (q.mean, q.var))
        for p, q in zip(stepped.body.batch_norms, moved.body.batch_norms, strict=True)
    )
