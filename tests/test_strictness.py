"""The suite's own strictness is on (so that the other tests run under it)."""

import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

from distillation._objectives import closed_form_head


def test_rank_promotion_raises():
    with pytest.raises(ValueError, match="jax_numpy_rank_promotion"):
        jnp.ones(3) + jnp.ones((2, 3))


def test_dtype_promotion_is_strict():
    with pytest.raises(Exception, match="promot"):
        jnp.ones(3, jnp.int32) + jnp.ones(3, jnp.float32)


def test_jaxtyping_annotations_are_checked_at_run_time():
    # closed_form_head(features: Float[Array, "n d"], residual: Float[Array, "n k"], ...):
    # 5 feature rows against 4 residual rows violates the shared dimension n.
    features = jnp.asarray(np.ones((5, 7), np.float32))
    residual = jnp.asarray(np.ones((4, 3), np.float32))
    with pytest.raises(jaxtyping.TypeCheckError):
        closed_form_head(features, residual, 0.1)
