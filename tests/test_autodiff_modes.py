"""Every autodiff mode through the implicit rule, against oracles, in float64.

Symmetric problem: ridge regression, whose solution ``(XᵀX + diag λ)⁻¹Xᵀy`` has derivatives of
every order by plain autodiff of the closed form. The inner solver used with ``custom_root``
returns that solution behind ``stop_gradient``: its own code has no derivative, so every
derivative below (including second ones) must come from the implicit rule.

General problem: the fixed point ``z = tanh(W z + θ)`` with a non-symmetric ``W`` (a contraction),
against 200 unrolled iterations (converged: the unrolled derivatives converge geometrically
too).

Tolerances: the direct solvers and the Krylov solvers at rtol 1e-12 on problems with condition
≈ 3 reach ~1e-14 (measured); 1e-8 leaves a margin for any CPU's summation order.
AdamQuadratic is a fixed budget of 200 Adam steps (accuracy ~1e-5 measured; 1e-4 here) and
Neumann 100 terms of a series with ratio ≈ 2/3 (~1e-15).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import optax
import optimistix as optx
import pytest
from conftest import all_linear_solvers
from problems import rel_err, ridge_data

import bilevel

# A failed solve raises EquinoxRuntimeError outside jit and a JaxRuntimeError (carrying the same
# message) inside a jax.jit.
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)


def _solvers(symmetric: bool = True):
    # The fast suite runs each mode with the default solvers: CG on the symmetric problem, GMRES
    # (`solve=None`) on the general one; the rest of the list, the direct solvers included, runs
    # with the slow tests (`pytest -m slow`).
    return all_linear_solvers(symmetric, fast={"CG"})


def _tol(solve):
    return 1e-4 if isinstance(solve, bilevel.AdamQuadratic) else 1e-8


def _ridge_problem(solve):
    x, y, xv, yv = ridge_data()

    def inner_loss(w, lam):
        return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)

    @bilevel.custom_root(jax.grad(inner_loss), solve=solve, symmetric=True)
    def implicit(init_w, lam):
        return jax.lax.stop_gradient(bilevel.ridge_solution(x, y, lam))

    def exact(lam):
        return bilevel.ridge_solution(x, y, lam)

    def validation(solution):
        return lambda lam: 0.5 * jnp.sum((xv @ solution(lam) - yv) ** 2)

    return (lambda lam: implicit(jnp.zeros(x.shape[1]), lam)), exact, validation


def _lam():
    return jnp.linspace(0.2, 1.0, 8)  # float64 inside the x64 fixture


@pytest.mark.parametrize("solve", _solvers())
def test_first_order_modes_on_a_symmetric_problem(x64, solve):
    implicit, exact, validation = _ridge_problem(solve)
    lam, direction = _lam(), jnp.linspace(-1.0, 1.0, 8)
    tol = _tol(solve)
    # jvp: against the closed form and against central differences
    _, t_implicit = jax.jvp(implicit, (lam,), (direction,))
    _, t_exact = jax.jvp(exact, (lam,), (direction,))
    assert rel_err(t_implicit, t_exact) < tol
    h = 1e-6
    fd = (exact(lam + h * direction) - exact(lam - h * direction)) / (2 * h)
    assert rel_err(t_implicit, fd) < max(tol, 1e-7)  # FD: O(h²) + eps/h ≈ 1e-10
    assert rel_err(jax.jacfwd(implicit)(lam), jax.jacfwd(exact)(lam)) < tol
    assert rel_err(jax.jacrev(implicit)(lam), jax.jacrev(exact)(lam)) < tol
    assert (
        rel_err(jax.jit(jax.grad(validation(implicit)))(lam), jax.grad(validation(exact))(lam))
        < tol
    )


@pytest.mark.parametrize("solve", _solvers())
def test_second_order_modes_on_a_symmetric_problem(x64, solve):
    implicit, exact, validation = _ridge_problem(solve)
    tol = 1e-3 if isinstance(solve, bilevel.AdamQuadratic) else 1e-7
    f_implicit, f_exact = validation(implicit), validation(exact)
    lam = _lam()
    assert rel_err(jax.hessian(f_implicit)(lam), jax.hessian(f_exact)(lam)) < tol
    scalar = lambda f: lambda s: f(s * lam)  # noqa: E731
    assert (
        rel_err(
            jax.grad(jax.grad(scalar(f_implicit)))(1.0), jax.grad(jax.grad(scalar(f_exact)))(1.0)
        )
        < tol
    )


@pytest.mark.parametrize("solve", _solvers())
def test_vmap_of_forward_and_reverse_mode(x64, solve):
    implicit, exact, validation = _ridge_problem(solve)
    lam = _lam()
    lams = jnp.stack([lam, 2 * lam, 0.5 * lam])
    direction = jnp.ones(8)
    jvp = lambda fn: jax.vmap(lambda lam: jax.jvp(fn, (lam,), (direction,))[1])  # noqa: E731
    assert rel_err(jvp(implicit)(lams), jvp(exact)(lams)) < _tol(solve)
    grads = lambda fn: jax.vmap(jax.grad(validation(fn)))  # noqa: E731
    assert rel_err(grads(implicit)(lams), grads(exact)(lams)) < _tol(solve)


def _fixed_point_problem():
    rng = np.random.default_rng(0)
    w_mat = jnp.asarray(0.5 * rng.normal(size=(5, 5)) / np.sqrt(5))
    assert float(jnp.max(jnp.abs(w_mat - w_mat.T))) > 0.1  # really not symmetric
    theta = jnp.asarray(rng.normal(size=5))

    def T(z, theta):
        return jnp.tanh(w_mat @ z + theta)

    def unrolled(theta):
        return jax.lax.fori_loop(0, 200, lambda _, z: T(z, theta), jnp.zeros(5))

    return T, unrolled, theta


@pytest.mark.parametrize("solve", [None, *_solvers(symmetric=False)])
def test_non_symmetric_fixed_point_in_every_mode(x64, solve):
    T, unrolled, theta = _fixed_point_problem()

    @bilevel.custom_fixed_point(T, solve=solve)
    def iterate(z0, theta):
        return jax.lax.fori_loop(0, 200, lambda _, z: T(z, theta), z0)

    fp = lambda t: iterate(jnp.zeros(5), t)  # noqa: E731
    jac_rev, jac_fwd, hess = _unrolled_fixed_point_derivatives()
    assert rel_err(jax.jacrev(fp)(theta), jac_rev) < 1e-8
    assert rel_err(jax.jacfwd(fp)(theta), jac_fwd) < 1e-8
    total = lambda f: lambda t: jnp.sum(f(t) ** 2)  # noqa: E731
    assert rel_err(jax.hessian(total(fp))(theta), hess) < 1e-8


@functools.cache
def _unrolled_fixed_point_derivatives():
    """The oracle of the test above, computed once (float64; every caller is inside ``x64``)."""
    _, unrolled, theta = _fixed_point_problem()
    assert theta.dtype == jnp.float64
    total = lambda t: jnp.sum(unrolled(t) ** 2)  # noqa: E731
    return jax.jacrev(unrolled)(theta), jax.jacfwd(unrolled)(theta), jax.hessian(total)(theta)


def test_custom_root_defaults_are_right_for_a_non_symmetric_root(x64):
    """The jaxopt port of ``F(z, θ) = z − tanh(Wz + θ)`` with every default."""
    T, unrolled, theta = _fixed_point_problem()

    @bilevel.custom_root(lambda z, t: z - T(z, t))
    def iterate(z0, theta):
        return jax.lax.fori_loop(0, 200, lambda _, z: T(z, theta), z0)

    got = jax.jacrev(lambda t: iterate(jnp.zeros(5), t))(theta)
    assert rel_err(got, jax.jacrev(unrolled)(theta)) < 1e-8


@pytest.mark.parametrize("solve", _solvers())
def test_symmetric_only_solvers_are_refused_for_a_general_root(solve):
    if not solve.symmetric_only:
        bilevel.custom_root(lambda z, t: z - t, solve=solve)  # accepted
        return
    with pytest.raises(ValueError, match="only correct for a symmetric"):
        bilevel.custom_root(lambda z, t: z - t, solve=solve)
    with pytest.raises(ValueError, match="only correct for a symmetric"):
        bilevel.custom_fixed_point(lambda z, t: t, solve=solve)


@pytest.mark.slow
def test_argmin_with_a_while_loop_inner_solver_has_second_derivatives(x64):
    x, y, _, _ = ridge_data()
    m = bilevel.OptaxMinimizer(optax.sgd(0.5), steps=5000, tol=1e-12)

    def loss(w, lam):
        return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)

    f = lambda lam: jnp.sum(bilevel.argmin(loss, jnp.zeros(8), lam, minimizer=m).value ** 2)  # noqa: E731
    g = lambda lam: jnp.sum(bilevel.ridge_solution(x, y, lam) ** 2)  # noqa: E731
    assert rel_err(jax.hessian(f)(0.3), jax.hessian(g)(0.3)) < 1e-7
    assert rel_err(jax.jacfwd(f)(0.3), jax.grad(g)(0.3)) < 1e-7


def test_losses_that_close_over_traced_arrays(x64):
    """``lambda w, lam: loss(w, lam, X)`` differentiated in the closed-over ``X``."""
    x, y, xv, yv = ridge_data()
    m = bilevel.ClosedFormRidge()

    def through_argmin(x_):
        loss = lambda w, lam: 0.5 * jnp.sum((x_ @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)  # noqa: E731
        w = bilevel.argmin(loss, jnp.zeros(8), 0.3, minimizer=m, solve=bilevel.Dense()).value
        return 0.5 * jnp.sum((xv @ w - yv) ** 2)

    def closed(x_):
        return 0.5 * jnp.sum((xv @ bilevel.ridge_solution(x_, y, 0.3) - yv) ** 2)

    assert rel_err(jax.grad(through_argmin)(x), jax.grad(closed)(x)) < 1e-10
    assert rel_err(jax.jit(jax.grad(through_argmin))(x), jax.grad(closed)(x)) < 1e-10
    d = jnp.ones_like(x)
    assert rel_err(jax.jvp(through_argmin, (x,), (d,))[1], jax.jvp(closed, (x,), (d,))[1]) < 1e-10


def test_a_failed_solve_raises_with_throw_and_reports_without(x64):
    indefinite = -jnp.eye(3)
    b = jnp.ones(3)
    report = bilevel.Neumann(steps=10, step_size=0.5).solve(lambda v: indefinite @ v, b)
    assert int(report.result) == bilevel.RESULTS.diverged
    with pytest.raises(RUNTIME_ERRORS, match="diverged"):
        bilevel.Neumann(steps=10, step_size=0.5)(lambda v: indefinite @ v, b)
    # CG that runs out of steps says so.
    a = jnp.diag(jnp.logspace(0, 4, 20))
    cg = bilevel.CG(rtol=1e-12, max_steps=2, throw=False).solve(lambda v: a @ v, jnp.ones(20))
    assert int(cg.result) == bilevel.RESULTS.max_steps_reached and int(cg.steps) == 2
    with pytest.raises(RUNTIME_ERRORS, match="maximum number of steps"):
        bilevel.CG(rtol=1e-12, max_steps=2)(lambda v: a @ v, jnp.ones(20))
    # AdamQuadratic with a learning rate far too high on a stiff problem: NaN or divergence.
    stiff = bilevel.AdamQuadratic(steps=50, learning_rate=1e3, throw=False)
    assert int(stiff.solve(lambda v: a @ v, jnp.ones(20)).result) != bilevel.RESULTS.successful
    # argmin: a tolerance not met within the step budget.
    loss = lambda w: 0.5 * jnp.sum((w - 3.0) ** 2)  # noqa: E731
    slow = bilevel.OptaxMinimizer(optax.sgd(1e-3), steps=5, tol=1e-9)
    sol = bilevel.argmin(loss, jnp.zeros(2), minimizer=slow, throw=False)
    assert int(sol.result) == bilevel.RESULTS.max_steps_reached
    assert bilevel.result_message(sol.result).startswith("the solver reached its maximum")
    with pytest.raises(RUNTIME_ERRORS, match="maximum number of steps"):
        jax.jit(lambda: bilevel.argmin(loss, jnp.zeros(2), minimizer=slow).value)()
    # A NaN in the inner problem is reported as such.
    nan_loss = lambda w: jnp.sum(w**2) * jnp.nan  # noqa: E731
    fixed = bilevel.OptaxMinimizer(optax.sgd(0.1), steps=3)
    sol = bilevel.argmin(nan_loss, jnp.zeros(2), minimizer=fixed, throw=False)
    assert int(sol.result) == bilevel.RESULTS.nonfinite


def test_jaxopt_and_optimistix_as_oracles(x64):
    T, unrolled, theta = _fixed_point_problem()

    @bilevel.custom_fixed_point(T)
    def ours(z0, theta):
        return jax.lax.fori_loop(0, 200, lambda _, z: T(z, theta), z0)

    @jaxopt.implicit_diff.custom_fixed_point(T, solve=jaxopt.linear_solve.solve_gmres)
    def theirs(z0, theta):
        return jax.lax.fori_loop(0, 200, lambda _, z: T(z, theta), z0)

    def optimistix(theta):
        solver = optx.FixedPointIteration(rtol=1e-14, atol=1e-14)
        return optx.fixed_point(
            lambda z, t: T(z, t), solver, jnp.zeros(5), theta, adjoint=optx.ImplicitAdjoint()
        ).value

    want = jax.jacrev(lambda t: ours(jnp.zeros(5), t))(theta)
    assert rel_err(jax.jacrev(lambda t: theirs(jnp.zeros(5), t))(theta), want) < 1e-8
    assert rel_err(jax.jacrev(optimistix)(theta), want) < 1e-8
    assert (
        rel_err(jax.jacfwd(optimistix)(theta), jax.jacfwd(lambda t: ours(jnp.zeros(5), t))(theta))
        < 1e-8
    )


def test_unrolled_adjoint_and_checkpointing_agree(x64):
    x, y, _, _ = ridge_data()
    loss = lambda w, lam: 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)  # noqa: E731
    m = bilevel.OptaxMinimizer(optax.sgd, steps=50, learning_rate=0.3)

    def f(adjoint):
        return jax.grad(
            lambda lam: jnp.sum(
                bilevel.argmin(loss, jnp.zeros(8), lam, minimizer=m, adjoint=adjoint).value
            )
        )

    plain, ckpt = f(bilevel.Unrolled())(0.3), f(bilevel.Unrolled(checkpoint=True))(0.3)
    assert rel_err(ckpt, plain) < 1e-12  # the same arithmetic, rematerialised
    implicit = f(bilevel.Implicit(bilevel.Dense()))(0.3)
    assert rel_err(plain, implicit) < 1e-6  # 50 steps at rate ~0.6 per step: converged


@pytest.mark.slow
def test_bicgstab_on_a_larger_non_symmetric_fixed_point(x64):
    """BiCGStab on a 60-dimensional fixed point (it breaks down on the 5-dimensional one, which
    Krylov methods solve exactly in 5 steps)."""
    rng = np.random.default_rng(1)
    n = 60
    w_mat = jnp.asarray(0.5 * rng.normal(size=(n, n)) / np.sqrt(n))
    theta = jnp.asarray(rng.normal(size=n))

    def T(z, theta):
        return jnp.tanh(w_mat @ z + theta)

    @bilevel.custom_fixed_point(T, solve=bilevel.BiCGStab(rtol=1e-10))
    def iterate(z0, theta):
        return jax.lax.fori_loop(0, 200, lambda _, z: T(z, theta), z0)

    @bilevel.custom_fixed_point(T, solve=bilevel.LU())
    def exact(z0, theta):
        return jax.lax.fori_loop(0, 200, lambda _, z: T(z, theta), z0)

    loss = lambda f: lambda t: jnp.sum(jnp.sin(f(jnp.zeros(n), t)))  # noqa: E731
    assert rel_err(jax.grad(loss(iterate))(theta), jax.grad(loss(exact))(theta)) < 1e-8
    d = jnp.ones(n)
    fwd = lambda f: jax.jvp(loss(f), (theta,), (d,))[1]  # noqa: E731
    assert rel_err(fwd(iterate), fwd(exact)) < 1e-8
