"""Linear and inner solvers: accuracy, pytrees, diagnostics, validation, memory."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import all_linear_solvers
from problems import rel_err, tree_ravel

import bilevel


def _spd(n, cond=4.0, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return jnp.asarray(q @ np.diag(np.linspace(1.0, cond, n)) @ q.T)


@pytest.mark.parametrize("solve", all_linear_solvers())
def test_solves_pytree_system_and_reports_residual(x64, solve):
    a = _spd(7)
    b = {"u": jnp.arange(3.0) + 1.0, "v": jnp.ones((2, 2))}
    flat_b = tree_ravel(b)

    def matvec(t):
        out = a @ tree_ravel(t)
        return {"u": out[:3], "v": out[3:].reshape(2, 2)}

    result = solve.solve(matvec, b)
    assert jax.tree_util.tree_structure(result.value) == jax.tree_util.tree_structure(b)
    want = jnp.linalg.solve(a, flat_b)
    err = rel_err(tree_ravel(result.value), want)
    assert err < {"AdamQuadratic": 1e-3}.get(type(solve).__name__, 1e-8)
    # The reported residual is the true one.
    true_res = jnp.linalg.norm(a @ tree_ravel(result.value) - flat_b) / jnp.linalg.norm(flat_b)
    assert jnp.allclose(result.relative_residual, true_res, rtol=1e-6, atol=1e-14)


def test_residual_exposes_a_bad_solve(x64):
    a = _spd(10, cond=100.0)
    b = jnp.ones(10)
    good = bilevel.Dense().solve(lambda v: a @ v, b).relative_residual
    bad = bilevel.Neumann(steps=2).solve(lambda v: a @ v, b).relative_residual
    assert good < 1e-12
    assert bad > 0.1


def test_solvers_work_in_float32_and_under_jit():
    a = _spd(6).astype(jnp.float32)
    b = jnp.ones(6, jnp.float32)
    for solve in [bilevel.Dense(), bilevel.CG(), bilevel.Neumann(), bilevel.AdamQuadratic()]:
        x = jax.jit(lambda b, s=solve: s(lambda v: a @ v, b))(b)
        assert x.dtype == jnp.float32
        assert rel_err(a @ x, b) < 1e-3


def test_ridge_option_and_zero_rhs(x64):
    a = jnp.diag(jnp.asarray([0.0, 1.0, 2.0]))  # singular PSD
    b = jnp.ones(3)
    for solve in [bilevel.CG(ridge=0.5, rtol=1e-12), bilevel.Dense(ridge=0.5)]:
        x = solve(lambda v: a @ v, b)
        assert rel_err(x, b / (jnp.diag(a) + 0.5)) < 1e-10
    zero = bilevel.AdamQuadratic().solve(lambda v: a @ v, jnp.zeros(3))
    assert jnp.all(zero.value == 0) and zero.relative_residual == 0


def test_adam_quadratic_is_eq7_and_warm_starts(x64):
    a = _spd(5)
    b = jnp.arange(1.0, 6.0)
    exact = jnp.linalg.solve(a, b)
    cold = bilevel.AdamQuadratic(steps=5)(lambda v: a @ v, b)
    warm = bilevel.AdamQuadratic(steps=5)(lambda v: a @ v, b, init=exact)
    assert rel_err(warm, exact) < rel_err(cold, exact)
    # Any optax optimizer can drive it.
    sgd = bilevel.AdamQuadratic(steps=500, optimizer=optax.sgd(0.2))(lambda v: a @ v, b)
    assert rel_err(sgd, exact) < 1e-8


def test_largest_eigenvalue_and_materialize(x64):
    a = _spd(6, cond=9.0)
    lam = bilevel.largest_eigenvalue(lambda v: a @ v, jnp.zeros(6), iterations=200)
    assert abs(float(lam) - 9.0) < 1e-6
    assert jnp.allclose(bilevel.materialize(lambda v: a @ v, jnp.zeros(6)), a)


def test_hvp_matches_hessian(x64):
    f = lambda w, c: jnp.sum(jnp.sin(w) * c) + jnp.sum(w**4)
    w = jnp.asarray([0.3, -1.2, 2.0])
    v = jnp.asarray([1.0, 2.0, -1.0])
    assert jnp.allclose(bilevel.hvp(f, w, v, 2.0), jax.hessian(f)(w, 2.0) @ v)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: bilevel.CG(rtol=-1.0), "rtol"),
        (lambda: bilevel.CG(max_steps=0), "max_steps"),
        (lambda: bilevel.CG(rtol=float("nan")), "rtol"),
        (lambda: bilevel.CG(atol=float("inf")), "atol"),
        (lambda: bilevel.GMRES(rtol=0.0, atol=0.0), "rtol"),
        (lambda: bilevel.GMRES(restart=0), "restart"),
        (lambda: bilevel.Neumann(step_size=float("nan")), "step_size"),
        (lambda: bilevel.OptaxMinimizer(optax.sgd(0.1), steps=5, tol=float("nan")), "tol"),
        (lambda: bilevel.OptaxMinimizer(optax.sgd(0.1), steps=5, learning_rate=0.1), "factory"),
        (lambda: bilevel.Neumann(steps=-3), "steps"),
        (lambda: bilevel.Neumann(step_size=0.0), "step_size"),
        (lambda: bilevel.AdamQuadratic(learning_rate=-0.1), "learning_rate"),
        (lambda: bilevel.AdamQuadratic(steps=2.5), "steps"),
        (lambda: bilevel.AdamQuadratic(optimizer="adam"), "optimizer"),
        (lambda: bilevel.Dense(ridge=-1.0), "ridge"),
        (lambda: bilevel.OptaxMinimizer(optax.sgd(0.1), steps=-1), "steps"),
        (lambda: bilevel.OptaxMinimizer("sgd", steps=10), "optimizer"),
        (lambda: bilevel.OptaxMinimizer(optax.sgd(0.1), steps=5, tol=-1.0), "tol"),
        (lambda: bilevel.OptaxMinimizer(optax.sgd(0.1), steps=5, step_args=3), "step_args"),
        (
            lambda: bilevel.OptaxMinimizer(optax.sgd(0.1), 5, tol=1e-3, step_args=lambda k, c: c),
            "step_args",
        ),
    ],
)
def test_bad_options_raise_clear_value_error(make, match, unchecked_types):
    with pytest.raises(ValueError, match=match) as excinfo:
        make()
    assert "got" in str(excinfo.value)  # the message names the bad value


def test_solvers_are_immutable_and_hashable():
    solve = bilevel.CG(rtol=1e-4)
    with pytest.raises(AttributeError):
        solve.rtol = 1.0
    assert hash(solve) == hash(bilevel.CG(rtol=1e-4))


def test_optax_minimizer_diagnostics_and_tolerance(x64):
    loss = lambda w, c: 0.5 * jnp.sum((w - c) ** 2)
    fixed = bilevel.OptaxMinimizer(optax.sgd(0.5), steps=50)
    w, info, result = fixed(loss, jnp.zeros(3), 2.0)
    assert int(result) == bilevel.RESULTS.successful
    assert int(info.steps) == 50
    assert jnp.allclose(w, 2.0) and float(info.grad_norm) < 1e-12
    early = bilevel.OptaxMinimizer(optax.sgd(0.5), steps=1000, tol=1e-3)
    w, info, result = early(loss, jnp.zeros(3), 2.0)
    assert int(result) == bilevel.RESULTS.successful
    assert int(info.steps) < 20 and float(info.grad_norm) <= 1e-3
    # Warm start: starting at the solution takes no steps.
    _, info, _ = early(loss, jnp.full(3, 2.0), 2.0)
    assert int(info.steps) == 0


def test_argmin_rejects_bad_minimizer(unchecked_types):
    with pytest.raises(ValueError, match="minimizer"):
        bilevel.argmin(lambda w: jnp.sum(w**2), jnp.zeros(2), minimizer=optax.sgd(0.1))


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_implicit_memory_does_not_grow_with_inner_steps():
    x = jax.random.normal(jax.random.key(0), (200, 50))
    y = jnp.ones(200)
    loss = lambda w, lam: 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)

    def implicit(steps):
        m = bilevel.OptaxMinimizer(optax.sgd(1e-3), steps=steps)
        return jax.grad(
            lambda lam: jnp.sum(bilevel.argmin(loss, jnp.zeros(50), lam, minimizer=m)[0])
        )

    def unrolled(steps):
        opt = optax.sgd(1e-3)
        return jax.grad(
            lambda lam: jnp.sum(
                bilevel.unrolled_argmin(loss, jnp.zeros(50), lam, optimizer=opt, steps=steps)
            )
        )

    implicit_mem = [_temp_bytes(implicit(n), 1.0) for n in (10, 100, 1000)]
    unrolled_mem = [_temp_bytes(unrolled(n), 1.0) for n in (10, 100, 1000)]
    assert implicit_mem[0] == implicit_mem[1] == implicit_mem[2]
    assert unrolled_mem[2] > 10 * unrolled_mem[0]  # the contrast the check relies on


def test_traces_report_the_losses_of_a_solve(x64):
    a = _spd(6)
    b = jnp.ones(6)
    x, trace = bilevel.AdamQuadratic(steps=50, learning_rate=0.01).solve_with_trace(
        lambda v: a @ v, b
    )
    assert trace.shape == (51,) and float(trace[0]) == 0.0  # objective at x = 0
    nb = jnp.linalg.norm(b)
    final = 0.5 * (x / nb) @ a @ (x / nb) - (b / nb) @ (x / nb)
    assert jnp.allclose(trace[-1], final)  # last entry is the objective at the returned point
    assert float(trace[-1]) < float(trace[0])
    loss = lambda w: 0.5 * jnp.sum((w - 3.0) ** 2)
    _, info, _ = bilevel.OptaxMinimizer(optax.sgd(0.1), steps=10)(loss, jnp.zeros(2))
    assert info.loss_trace.shape == (10,) and float(info.loss_trace[0]) == 9.0
    assert bool(jnp.all(jnp.diff(info.loss_trace) < 0))
    _, info, _ = bilevel.OptaxMinimizer(optax.sgd(0.5), steps=30, tol=1e-3)(loss, jnp.zeros(2))
    assert int(info.steps) < 30 and bool(jnp.isnan(info.loss_trace[-1]))  # steps not taken


def test_cg_recurrence_stopping_preconditioning_warm_start_and_failures(x64):
    """Our CG: the documented 2-norm test, one matvec per step, a Jacobi preconditioner that
    helps, a warm start, a zero entry in b, per-lane stopping under vmap, and each failure code."""
    n = 60
    a = _spd(n, cond=50.0)
    x_true = jnp.asarray(np.random.default_rng(1).normal(size=n))
    b = a @ x_true
    calls = []

    def counted(v):
        calls.append(None)  # traced once per call site: counts matvecs in the program
        return a @ v

    sol = bilevel.CG(rtol=1e-10).solve(counted, b)
    assert int(sol.result) == bilevel.RESULTS.successful
    # The residual test is on ||A x - b|| ≤ rtol·||b||; the recurrence residual tracks the true
    # one to ~κ·eps64 ≈ 1e-14 relative, far inside 1e-10 (the margin is for the drift).
    assert float(sol.relative_residual) < 1e-9
    assert rel_err(sol.value, x_true) < 1e-8
    # Conjugate gradient in exact arithmetic ends within n steps; in float64 on κ = 50 it needs
    # far fewer than the 10·n budget.
    assert 0 < int(sol.steps) <= n
    # Traced three times: the shape check (`eval_shape`, nothing runs), the loop body, and the
    # reported residual (`solve`). No other matvec: lineax's CG had one more every 10 steps.
    assert len(calls) == 3

    # A zero entry in b does not stall it (a per-entry relative test would never be met).
    b0 = b.at[0].set(0.0)
    sol0 = bilevel.CG(rtol=1e-8).solve(lambda v: a @ v, b0)
    assert int(sol0.result) == bilevel.RESULTS.successful and int(sol0.steps) <= n

    # Jacobi preconditioning on a badly scaled SPD matrix: fewer steps, same answer.
    d = jnp.asarray(np.logspace(0, 4, n))
    scaled = d[:, None] * a * d[None, :]
    plain = bilevel.CG(rtol=1e-8, max_steps=10 * n).solve(lambda v: scaled @ v, b)
    jacobi = bilevel.CG(rtol=1e-8, preconditioner=lambda v: v / jnp.diag(scaled)).solve(
        lambda v: scaled @ v, b
    )
    assert int(jacobi.result) == bilevel.RESULTS.successful
    assert int(jacobi.steps) < int(plain.steps)
    assert float(jacobi.relative_residual) < 1e-7

    # Warm start at the answer: no step taken.
    warm = bilevel.CG(rtol=1e-8).solve(lambda v: a @ v, b, init=sol.value)
    assert int(warm.steps) == 0 and int(warm.result) == bilevel.RESULTS.successful

    # vmap: each lane stops on its own test (a zero right-hand side takes no step).
    bs = jnp.stack([b, jnp.zeros(n), 3.0 * b])
    xs = jax.vmap(lambda rhs: bilevel.CG(rtol=1e-10)(lambda v: a @ v, rhs))(bs)
    assert rel_err(xs[0], x_true) < 1e-8 and jnp.all(xs[1] == 0)
    assert rel_err(xs[2], 3.0 * x_true) < 1e-8

    # Failures: budget, indefinite operator, NaN.
    short = bilevel.CG(rtol=1e-12, max_steps=3, throw=False).solve(lambda v: a @ v, b)
    assert int(short.result) == bilevel.RESULTS.max_steps_reached and int(short.steps) == 3
    indefinite = jnp.diag(jnp.asarray([1.0, -1.0, 2.0]))
    bad = bilevel.CG(throw=False).solve(lambda v: indefinite @ v, jnp.asarray([1.0, 1.0, 0.0]))
    assert int(bad.result) == bilevel.RESULTS.breakdown
    nan = bilevel.CG(throw=False).solve(lambda v: a @ v * jnp.nan, b)
    assert int(nan.result) == bilevel.RESULTS.nonfinite
    with pytest.raises(Exception, match="broke down"):
        bilevel.CG()(lambda v: indefinite @ v, jnp.asarray([1.0, 1.0, 0.0]))


@pytest.mark.parametrize("solve", all_linear_solvers())
def test_an_operator_that_does_not_map_b_like_b_is_named(solve):
    """A matvec whose output is not shaped like its input (a pytree leaf dropped, a wrong shape)
    and a warm start not shaped like b: one ValueError naming both, not an error from JAX."""
    b = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(
        ValueError,
        match=r"maps b \(PyTreeDef\(\{'a': \*, 'b': \*\}\) with shapes \[\(2,\), \(3,\)\]\) "
        r"to PyTreeDef\(\{'a': \*\}\)",
    ):
        solve(lambda v: {"a": v["a"]}, b)
    with pytest.raises(
        ValueError, match=r"with shapes \[\(3,\)\]\) to PyTreeDef\(\*\) with shapes \[\(2,\)\]"
    ):
        solve.solve(lambda v: v[:2], jnp.ones(3))
    with pytest.raises(ValueError, match="warm start"):
        solve(lambda v: v, jnp.ones(3), init=jnp.ones(4))


class _Shifted(eqx.Module):
    """``step_args``: step ``k``'s target is ``c + shifts[k]``."""

    shifts: jax.Array

    def __call__(self, k, c):
        return (c + self.shifts[k],)


def test_optax_minimizer_step_args_give_each_step_its_own_objective(x64):
    """``step_args(k, *args)``: step ``k``'s gradient is taken with its own arguments (a
    hand-written loop of gradient steps on moving targets); the final loss, gradient norm and the
    implicit derivative use the arguments as given."""
    loss = lambda w, c: 0.5 * jnp.sum((w - c) ** 2)  # noqa: E731
    shifts = jnp.asarray([[0.0, 1.0], [0.5, -1.0], [2.0, 0.0], [-1.0, 3.0]])
    c = jnp.asarray([1.0, 2.0])
    minimizer = bilevel.OptaxMinimizer(optax.sgd(0.3), steps=4, step_args=_Shifted(shifts))
    w, info, _ = minimizer(loss, jnp.zeros(2), c)
    want, trace = jnp.zeros(2), []
    for k in range(4):
        trace.append(loss(want, c + shifts[k]))
        want = want - 0.3 * (want - (c + shifts[k]))
    assert rel_err(w, want) < 1e-14
    assert rel_err(info.loss_trace, jnp.asarray(trace)) < 1e-14
    assert rel_err(info.loss, loss(want, c)) < 1e-14
    # The implicit derivative is the one of argmin_w loss(w, c) at the given c: dw/dc = I.
    jac = jax.jacobian(
        lambda c: bilevel.argmin(loss, jnp.zeros(2), c, minimizer=minimizer, throw=False).value
    )(c)
    assert rel_err(jac, jnp.eye(2)) < 1e-10
