"""The model pool of Algorithm 1: ``m`` partially trained models.

Each iteration one pool model is the linearisation point / inner starting point; afterwards it
takes one standard-dynamics training step (MSE on the current support set), and a model that has
taken ``K`` steps is re-initialised. Ages start spread over ``[0, K)`` so the pool holds models
at every stage of training from the first re-initialisations on. All of it is a pytree of
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
from distillation.models import ConvNet
from distillation.networks import Partitioned, map_batch

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
    """

    make_model: ModelFactory = eqx.field(static=True)
    size: int = eqx.field(static=True)
    reset_every: int = eqx.field(static=True)
    optimizer: optax.GradientTransformation = eqx.field(static=True)

    def __check_init__(self):
        for name in ("size", "reset_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelPool: `{name}` must be a positive integer, got {value!r}.")

    def _fresh(self, key):
        model = self.make_model(key)
        return model, self.optimizer.init(model)

    def init(self, *, key: PRNGKeyArray) -> PoolState:
        k_models, k_ages = jax.random.split(key)
        models, opt_states = jax.vmap(self._fresh)(jax.random.split(k_models, self.size))
        ages = jax.random.randint(k_ages, (self.size,), 0, self.reset_every)
        return PoolState(models, opt_states, ages)

    def model(self, state: PoolState, index: Array) -> ConvNet:
        return jax.tree_util.tree_map(lambda a: a[index], state.models)

    def train_step(
        self,
        state: PoolState,
        index: Array,
        images: Array | Partitioned,
        labels: Array,
        *,
        key: PRNGKeyArray,
    ) -> tuple[PoolState, Array]:
        """One MSE step of model ``index`` on ``(images, labels)``; renew it once it is ``K`` old.

        ``images`` may be a :class:`~distillation.networks.Partitioned` batch (``labels`` in the
        same order: stored part first).

        Returns:
            The new state and the training loss before the step.
        """
        model = self.model(state, index)
        opt_state = jax.tree_util.tree_map(lambda a: a[index], state.opt_states)

        def loss_fn(m):
            return 0.5 * jnp.mean(jnp.sum((map_batch(m, images) - labels) ** 2, axis=-1))

        loss, grads = jax.value_and_grad(loss_fn)(model)
        model, opt_state = optax_step(self.optimizer, grads, opt_state, model)
        age = state.ages[index] + 1
        renew = age >= self.reset_every
        fresh_model, fresh_opt = self._fresh(key)
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
