"""Hypergradients by implicit differentiation: bilevel vs jaxopt vs optimistix, in one run.

Two problems, float64:

* ridge regression (symmetric ``∂₁F``, the Hessian): n = 2000 training rows, d = 500 features,
  one strength per feature (d hyperparameters), validation loss on 1000 rows;
* a non-symmetric fixed point ``z = tanh(W z + θ)`` in dimension 400, ``W = 0.95 Q`` with ``Q``
  a random orthogonal matrix (a contraction whose eigenvalues lie on a circle, so that GMRES needs
  tens of iterations; ``∂₁F = I − diag(1 − z²) W`` is far from symmetric), θ ∈ R⁴⁰⁰, outer loss
  ``½‖z − target‖²``.

Every implicit variant is handed the same, exact inner solution (the solver returns its starting
point, the precomputed root; optimistix's solvers take one step from it to confirm convergence),
so the timings compare the backward passes: ours (``bilevel.custom_root`` /
``bilevel.custom_fixed_point``), jaxopt's ``custom_root`` / ``custom_fixed_point`` and
optimistix's ``minimise`` / ``fixed_point`` with ``ImplicitAdjoint``, each with its Krylov solver
(CG for ridge, GMRES for the fixed point) over a sweep of tolerances, plus each library's defaults.
The libraries read a tolerance differently (jaxopt and ours: ``‖r‖ ≤ tol·‖b‖``; lineax, which
optimistix uses: an elementwise scale, much stricter at the same number), so the comparison "at
equal accuracy" interpolates each library's time, linearly in log(error), at common target errors.
Reference gradients are dense float64 solves. Forward mode (``jax.jvp``, ``jax.jacfwd``) and
reverse mode (``jax.grad``) are compared for one scalar hyperparameter.

Times are medians of ``--repeats`` rounds; in each round every method runs once, in an order
rotated from round to round (interleaved, so that a slow spell of a shared machine hits all
methods alike), after one warm-up call (compilation excluded), with ``block_until_ready``.

Run:
    python benchmarks/hypergradient.py [--repeats 30]
Writes ``benchmarks/results/hypergradient.json`` and ``docs/benchmarks/hypergradient.md``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxopt
import lineax as lx
import numpy as np
import optimistix as optx

import bilevel

ROOT = Path(__file__).resolve().parents[1]
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-10)
TARGET_ERRORS = (1e-5, 1e-7, 1e-9)


@dataclass(frozen=True)
class Method:
    """One hypergradient to time: ``fn(*args)`` (jitted) and what it should equal."""

    problem: str
    library: str
    name: str
    fn: Callable[..., Any]
    args: tuple
    reference: np.ndarray | None  # None: the row is timed only
    tol: float | None = None  # the Krylov tolerance of a sweep row
    heavy: bool = False  # timed in a separate group with the minimum number of rounds


# --- ridge regression -------------------------------------------------------------------------


def ridge_data(n: int, n_val: int, d: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    x = rng.normal(size=(n, d)) / np.sqrt(n)
    y = x @ w_true + 0.1 * rng.normal(size=n)
    xv = rng.normal(size=(n_val, d)) / np.sqrt(n_val)
    yv = xv @ w_true + 0.1 * rng.normal(size=n_val)
    lam = np.exp(rng.uniform(np.log(0.1), np.log(1.0), size=d))
    return {k: jnp.asarray(v) for k, v in dict(x=x, y=y, xv=xv, yv=yv, lam=lam).items()}


def ridge_inner_loss(w, lam, x, y):
    return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)


def ridge_val_loss(w, xv, yv):
    return 0.5 * jnp.sum((xv @ w - yv) ** 2)


def cholesky_ridge(lam, x, y):
    gram = x.T @ x + jnp.diag(lam)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(gram), x.T @ y)


def ridge_reference(data) -> np.ndarray:
    """``∇L_val(λ) = −w* ⊙ H⁻¹ X_valᵀ (X_val w* − y_val)``, ``H = XᵀX + diag λ``."""
    x, y, xv, yv, lam = (np.asarray(data[k]) for k in ("x", "y", "xv", "yv", "lam"))
    h = x.T @ x + np.diag(lam)
    w = np.linalg.solve(h, x.T @ y)
    return -w * np.linalg.solve(h, xv.T @ (xv @ w - yv))


def _returns_start(w, *args):
    """The inner "solver": the exact root is passed in as the starting point."""
    return w


def ridge_ours(solve) -> Callable:
    solver = bilevel.custom_root(jax.grad(ridge_inner_loss), solve=solve, symmetric=True)(
        _returns_start
    )
    return jax.grad(lambda lam, w, x, y, xv, yv: ridge_val_loss(solver(w, lam, x, y), xv, yv))


def ridge_jaxopt(solve) -> Callable:
    kwargs = {} if solve is None else {"solve": solve}
    solver = jaxopt.implicit_diff.custom_root(jax.grad(ridge_inner_loss), **kwargs)(_returns_start)
    return jax.grad(lambda lam, w, x, y, xv, yv: ridge_val_loss(solver(w, lam, x, y), xv, yv))


def _ridge_optx_solution(lam, w, x, y, linear_solver):
    adjoint = (
        optx.ImplicitAdjoint() if linear_solver is None else optx.ImplicitAdjoint(linear_solver)
    )
    return optx.minimise(
        lambda w_, a: ridge_inner_loss(w_, *a),
        optx.GradientDescent(learning_rate=0.1, rtol=1e-12, atol=1e-12),
        w,
        args=(lam, x, y),
        adjoint=adjoint,
        tags=frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag}),
        max_steps=16,
    ).value


def ridge_optimistix(linear_solver) -> Callable:
    return jax.grad(
        lambda lam, w, x, y, xv, yv: ridge_val_loss(
            _ridge_optx_solution(lam, w, x, y, linear_solver), xv, yv
        )
    )


# --- non-symmetric fixed point z = tanh(W z + θ) ----------------------------------------------


def fixed_point_data(dim: int, contraction: float, seed: int = 1) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    w = contraction * q * np.sign(np.diag(r))  # a uniformly random orthogonal matrix, scaled
    theta = 0.5 * rng.normal(size=dim)
    target = 0.5 * rng.normal(size=dim)
    z = np.zeros(dim)
    for _ in range(2000):  # contraction 0.95: 0.95²⁰⁰⁰ ≈ 1e-45, converged to rounding
        z = np.tanh(w @ z + theta)
    return {k: jnp.asarray(v) for k, v in dict(w=w, theta=theta, target=target, z=z).items()}


def fixed_point_map(z, theta, w):
    return jnp.tanh(w @ z + theta)


def fixed_point_val_loss(z, target):
    return 0.5 * jnp.sum((z - target) ** 2)


def fixed_point_reference(data) -> np.ndarray:
    """``∇_θ L = D (I − D W)⁻ᵀ (z* − target)``, ``D = diag(1 − z*²)``."""
    w, z, target = (np.asarray(data[k]) for k in ("w", "z", "target"))
    dmat = np.diag(1 - z**2)
    return dmat @ np.linalg.solve((np.eye(len(z)) - dmat @ w).T, z - target)


def fixed_point_ours(solve) -> Callable:
    solver = bilevel.custom_fixed_point(fixed_point_map, solve=solve)(_returns_start)
    return jax.grad(lambda theta, z, w, t: fixed_point_val_loss(solver(z, theta, w), t))


def fixed_point_jaxopt(solve) -> Callable:
    kwargs = {} if solve is None else {"solve": solve}
    solver = jaxopt.implicit_diff.custom_fixed_point(fixed_point_map, **kwargs)(_returns_start)
    return jax.grad(lambda theta, z, w, t: fixed_point_val_loss(solver(z, theta, w), t))


def _fixed_point_optx_solution(theta, z, w, linear_solver):
    adjoint = (
        optx.ImplicitAdjoint() if linear_solver is None else optx.ImplicitAdjoint(linear_solver)
    )
    return optx.fixed_point(
        lambda z_, a: fixed_point_map(z_, *a),
        optx.FixedPointIteration(rtol=1e-12, atol=1e-12),
        z,
        args=(theta, w),
        adjoint=adjoint,
        max_steps=16,
    ).value


def fixed_point_optimistix(linear_solver) -> Callable:
    return jax.grad(
        lambda theta, z, w, t: fixed_point_val_loss(
            _fixed_point_optx_solution(theta, z, w, linear_solver), t
        )
    )


# --- the method lists -------------------------------------------------------------------------


def lineax_like_ours(cls, tol):
    """The lineax solver our wrapper builds for ``rtol=tol`` (2-norm, ``atol=0``)."""
    extra = {"restart": 20} if cls is lx.GMRES else {}
    return cls(rtol=tol, atol=0.0, norm=optx.two_norm, **extra)


def ridge_methods(data) -> list[Method]:
    ref = ridge_reference(data)
    w_star = cholesky_ridge(data["lam"], data["x"], data["y"])
    args = (data["lam"], w_star, data["x"], data["y"], data["xv"], data["yv"])
    p = "ridge"
    rows = []
    for tol in TOLERANCES:
        rows += [
            Method(
                p, "bilevel", f"CG(rtol={tol:g})", ridge_ours(bilevel.CG(rtol=tol)), args, ref, tol
            ),
            Method(
                p,
                "jaxopt",
                f"solve_cg(tol={tol:g})",
                ridge_jaxopt(functools.partial(jaxopt.linear_solve.solve_cg, tol=tol)),
                args,
                ref,
                tol,
            ),
            Method(
                p,
                "optimistix",
                f"lx.CG(rtol={tol:g}, atol=0, two_norm)",
                ridge_optimistix(lineax_like_ours(lx.CG, tol)),
                args,
                ref,
                tol,
            ),
        ]
    rows += [
        Method(
            p, "bilevel", "defaults (symmetric=True: CG(rtol=1e-6))", ridge_ours(None), args, ref
        ),
        Method(p, "jaxopt", "defaults (solve_normal_cg, tol 1e-5)", ridge_jaxopt(None), args, ref),
        # Our rule with jaxopt's own solver: the rule's overhead, the solver held fixed.
        Method(
            p,
            "bilevel rule",
            "custom_root + jaxopt solve_cg(tol=1e-6)",
            ridge_ours(functools.partial(jaxopt.linear_solve.solve_cg, tol=1e-6)),
            args,
            ref,
        ),
        Method(
            p,
            "optimistix",
            "defaults (ImplicitAdjoint(): AutoLinearSolver)",
            ridge_optimistix(None),
            args,
            ref,
            heavy=True,
        ),
        Method(p, "bilevel", "Dense()", ridge_ours(bilevel.Dense()), args, ref, heavy=True),
        Method(
            p,
            "bilevel",
            "Neumann() (100 terms)",
            ridge_ours(bilevel.Neumann()),
            args,
            ref,
            heavy=True,
        ),
        Method(
            p,
            "bilevel",
            "AdamQuadratic() (200 steps)",
            ridge_ours(bilevel.AdamQuadratic()),
            args,
            ref,
            heavy=True,
        ),
        Method(
            p,
            "context",
            "inner solve alone (Cholesky, forward, no gradient)",
            lambda lam, w, x, y, xv, yv: cholesky_ridge(lam, x, y),
            args,
            None,
            heavy=True,
        ),
    ]
    return rows


def fixed_point_methods(data) -> list[Method]:
    ref = fixed_point_reference(data)
    args = (data["theta"], data["z"], data["w"], data["target"])
    p = "fixed point"
    rows = []
    for tol in TOLERANCES:
        rows += [
            Method(
                p,
                "bilevel",
                f"GMRES(rtol={tol:g})",
                fixed_point_ours(bilevel.GMRES(rtol=tol)),
                args,
                ref,
                tol,
            ),
            Method(
                p,
                "jaxopt",
                f"solve_gmres(tol={tol:g})",
                fixed_point_jaxopt(functools.partial(jaxopt.linear_solve.solve_gmres, tol=tol)),
                args,
                ref,
                tol,
            ),
            Method(
                p,
                "optimistix",
                f"lx.GMRES(rtol={tol:g}, atol=0, two_norm)",
                fixed_point_optimistix(lineax_like_ours(lx.GMRES, tol)),
                args,
                ref,
                tol,
            ),
        ]
    rows += [
        Method(p, "bilevel", "defaults (GMRES(rtol=1e-6))", fixed_point_ours(None), args, ref),
        Method(
            p, "jaxopt", "defaults (solve_normal_cg, tol 1e-5)", fixed_point_jaxopt(None), args, ref
        ),
        Method(
            p,
            "bilevel rule",
            "custom_fixed_point + jaxopt solve_gmres(tol=1e-6)",
            fixed_point_ours(functools.partial(jaxopt.linear_solve.solve_gmres, tol=1e-6)),
            args,
            ref,
        ),
        Method(
            p, "bilevel", "BiCGStab(rtol=1e-6)", fixed_point_ours(bilevel.BiCGStab()), args, ref
        ),
        Method(
            p,
            "optimistix",
            "defaults (ImplicitAdjoint(): AutoLinearSolver)",
            fixed_point_optimistix(None),
            args,
            ref,
            heavy=True,
        ),
        Method(p, "bilevel", "LU()", fixed_point_ours(bilevel.LU()), args, ref, heavy=True),
    ]
    return rows


def mode_methods(ridge, fp) -> list[Method]:
    """Forward vs reverse mode for one scalar hyperparameter, through our implicit rule."""
    # Ridge with one shared strength s (λ = s·1).
    s_ridge = jnp.asarray(0.5)
    d = ridge["x"].shape[1]
    w_s = cholesky_ridge(s_ridge * jnp.ones(d), ridge["x"], ridge["y"])
    r_solver = bilevel.custom_root(
        jax.grad(ridge_inner_loss), solve=bilevel.CG(rtol=1e-6), symmetric=True
    )(_returns_start)

    def ridge_scalar(s, w, x, y, xv, yv):
        return ridge_val_loss(r_solver(w, s * jnp.ones(d), x, y), xv, yv)

    r_args = (s_ridge, w_s, ridge["x"], ridge["y"], ridge["xv"], ridge["yv"])
    # Fixed point with θ = s·θ₀, at s = 1 (whose root is precomputed).
    f_solver = bilevel.custom_fixed_point(fixed_point_map, solve=bilevel.GMRES(rtol=1e-6))(
        _returns_start
    )
    theta0 = fp["theta"]

    def fp_scalar(s, z, w, t):
        return fixed_point_val_loss(f_solver(z, s * theta0, w), t)

    f_args = (jnp.asarray(1.0), fp["z"], fp["w"], fp["target"])
    rows = []
    for p, fn, args in (
        ("ridge, scalar λ", ridge_scalar, r_args),
        ("fixed point, scalar s", fp_scalar, f_args),
    ):
        jvp = lambda *a, fn=fn: jax.jvp(lambda s: fn(s, *a[1:]), (a[0],), (jnp.ones_like(a[0]),))[1]
        rows += [
            Method(p, "bilevel", "reverse: jax.grad", jax.grad(fn), args, None),
            Method(p, "bilevel", "forward: jax.jvp", jvp, args, None),
            Method(p, "bilevel", "forward: jax.jacfwd", jax.jacfwd(fn), args, None),
        ]
    return rows


# --- timing and reporting ---------------------------------------------------------------------


def time_interleaved(
    methods: list[Method], repeats: int, min_seconds: float
) -> tuple[list[float], list[Any], int]:
    """Median time of each method over interleaved rounds: at least ``repeats`` rounds, more
    (up to ``min_seconds`` of rounds in all) when the methods are fast."""
    fns = [jax.jit(m.fn) for m in methods]
    outs = []
    for m, fn in zip(methods, fns, strict=True):  # compile + warm-up, excluded
        t0 = time.perf_counter()
        outs.append(jax.block_until_ready(fn(*m.args)))
        print(
            f"  compiled {m.problem}: {m.library} {m.name} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    times: list[list[float]] = [[] for _ in methods]
    order = list(range(len(methods)))
    t0 = time.perf_counter()
    for i in order:
        jax.block_until_ready(fns[i](*methods[i].args))
    rounds = max(repeats, int(min_seconds / (time.perf_counter() - t0)))
    for r in range(rounds):
        shift = r % len(order)
        for i in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[i](*methods[i].args))
            times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times], outs, rounds


def rel_error(g, ref) -> float:
    g = np.asarray(g, np.float64)
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def time_at_error(rows: list[dict], target: float) -> tuple[float | None, str]:
    """A library's time at ``target`` relative error from its tolerance sweep.

    Interpolated linearly in log(error) between the two sweep points that bracket the target;
    if even the loosest setting is more accurate than the target, the cheapest setting's time
    (an upper bound: ``"≤"``); if no setting reaches the target, ``None``.
    """
    pts = sorted((r["rel_error"], r["seconds"]) for r in rows)
    if target < pts[0][0]:
        return None, "not reached"
    if target >= pts[-1][0]:
        return min(t for _, t in pts), "≤"
    for (e_lo, t_lo), (e_hi, t_hi) in zip(pts[:-1], pts[1:], strict=True):
        if e_lo <= target <= e_hi:
            if e_hi == e_lo or e_lo <= 0:
                return t_hi, ""
            a = (math.log(target) - math.log(e_lo)) / (math.log(e_hi) - math.log(e_lo))
            return t_lo + a * (t_hi - t_lo), ""
    raise AssertionError("unreachable")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    t_start = time.perf_counter()

    ridge = ridge_data(2000, 1000, 500)
    fp = fixed_point_data(400, 0.95)
    lam = np.asarray(ridge["lam"])
    eigs = np.linalg.eigvalsh(np.asarray(ridge["x"].T @ ridge["x"]) + np.diag(lam))
    d = 1 - np.asarray(fp["z"]) ** 2
    jac = np.eye(len(d)) - d[:, None] * np.asarray(fp["w"])
    sv = np.linalg.svd(jac, compute_uv=False)
    asym = np.linalg.norm(jac - jac.T) / np.linalg.norm(jac)

    all_methods = ridge_methods(ridge) + fixed_point_methods(fp) + mode_methods(ridge, fp)
    # Groups timed apart, so that a group of millisecond calls is not interleaved with calls
    # that take a quarter of a second; fast groups get more rounds.
    groups = [
        [m for m in all_methods if m.problem == "ridge" and not m.heavy],
        [m for m in all_methods if m.problem == "fixed point" and not m.heavy],
        [m for m in all_methods if m.problem not in ("ridge", "fixed point")],
        [m for m in all_methods if m.heavy],
    ]
    methods, seconds, outs, rounds = [], [], [], []
    for group in groups:
        t, o, n_rounds = time_interleaved(group, args.repeats, min_seconds=20.0)
        methods += group
        seconds += t
        outs += o
        rounds.append(n_rounds)
    rows = []
    for m, t, out in zip(methods, seconds, outs, strict=True):
        err = rel_error(out, m.reference) if m.reference is not None else None
        rows.append(
            {
                "problem": m.problem,
                "library": m.library,
                "method": m.name,
                "tol": m.tol,
                "seconds": t,
                "rel_error": err,
            }
        )
        e = "" if err is None else f"rel. error {err:.1e}"
        print(f"{m.problem:22s} {m.library:10s} {m.name:48s} {t * 1e3:8.3f} ms  {e}", flush=True)

    # Equal accuracy: each library's sweep interpolated at common target errors.
    equal = []
    for problem in ("ridge", "fixed point"):
        sweep = {
            lib: [r for r in rows if r["problem"] == problem and r["library"] == lib and r["tol"]]
            for lib in ("bilevel", "jaxopt", "optimistix")
        }
        for target in TARGET_ERRORS:
            at = {lib: time_at_error(s, target) for lib, s in sweep.items()}
            t = {lib: v[0] for lib, v in at.items()}
            equal.append(
                {
                    "problem": problem,
                    "target_error": target,
                    "seconds": t,
                    "how": {lib: v[1] for lib, v in at.items()},
                    "ratio_to_jaxopt": _divide(t["bilevel"], t["jaxopt"]),
                    "ratio_to_optimistix": _divide(t["bilevel"], t["optimistix"]),
                }
            )
    modes = {}
    for problem in ("ridge, scalar λ", "fixed point, scalar s"):
        by = {
            m.name: (row, float(out))
            for m, row, out in zip(methods, rows, outs, strict=True)
            if m.problem == problem
        }
        (grad_row, grad), (jvp_row, jvp) = by["reverse: jax.grad"], by["forward: jax.jvp"]
        modes[problem] = {
            "reverse_s": grad_row["seconds"],
            "jvp_s": jvp_row["seconds"],
            "jacfwd_s": by["forward: jax.jacfwd"][0]["seconds"],
            "forward_reverse_rel_diff": abs(jvp - grad) / abs(grad),
        }

    meta = {
        "repeats": args.repeats,
        "rounds": dict(zip(("ridge", "fixed point", "modes", "slow rows"), rounds, strict=True)),
        "dtype": "float64",
        "ridge": {
            "n": 2000,
            "n_val": 1000,
            "d": 500,
            "condition_number": float(eigs[-1] / eigs[0]),
        },
        "fixed_point": {
            "dim": 400,
            "W": "0.95 Q, Q random orthogonal",
            "condition_number": float(sv[0] / sv[-1]),
            "asymmetry": float(asym),
        },
        "tolerances": list(TOLERANCES),
        "jax": jax.__version__,
        "jaxopt": importlib.metadata.version("jaxopt"),
        "optimistix": importlib.metadata.version("optimistix"),
        "lineax": importlib.metadata.version("lineax"),
        "device": str(jax.devices()[0]),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "wall_seconds": time.perf_counter() - t_start,
    }
    out_json = ROOT / "benchmarks" / "results" / "hypergradient.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(
        json.dumps({"meta": meta, "rows": rows, "equal_accuracy": equal, "modes": modes}, indent=2)
    )
    out_md = ROOT / "docs" / "benchmarks" / "hypergradient.md"
    out_md.write_text(render_markdown(meta, rows, equal, modes))
    print(out_md.read_text())


def _divide(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _ms(t: float | None) -> str:
    return "—" if t is None else f"{t * 1e3:.2f}"


def goals_summary(rows, equal, modes) -> list[str]:
    """The issue's goals, met or missed, in words, from this run's numbers."""

    def verdict(values: list[float]) -> str:
        shown = ", ".join(f"{v:.2f}" for v in values)
        return f"{'met' if max(values) <= 1.0 else '**missed**'} ({shown})"

    lines = ["## Goals", ""]
    for problem in ("ridge", "fixed point"):
        parts = []
        for other in ("jaxopt", "optimistix"):
            exact = [
                e[f"ratio_to_{other}"]
                for e in equal
                if e["problem"] == problem
                and e[f"ratio_to_{other}"] is not None
                and e["how"]["bilevel"] == e["how"][other] == ""
            ]
            parts.append(f"vs {other} {verdict(exact) if exact else 'no exact comparison'}")
        lines.append(
            f"* Time ratio ≤ 1.0 at equal accuracy, {problem} (interpolated targets only): "
            + "; ".join(parts)
            + "."
        )
    for problem, rule_name, theirs in (
        ("ridge", "custom_root + jaxopt solve_cg(tol=1e-6)", "solve_cg(tol=1e-06)"),
        (
            "fixed point",
            "custom_fixed_point + jaxopt solve_gmres(tol=1e-6)",
            "solve_gmres(tol=1e-06)",
        ),
    ):
        by = {(r["library"], r["method"]): r["seconds"] for r in rows if r["problem"] == problem}
        ratio = by[("bilevel rule", rule_name)] / by[("jaxopt", theirs)]
        lines.append(
            f"* {problem}, the solver held fixed: our rule with jaxopt's own linear solver "
            f"(`{theirs}`) takes {ratio:.2f}× jaxopt's time."
        )
    lines.append(
        "* GMRES: ours and optimistix call the same lineax solver; jaxopt calls "
        "`jax.scipy.sparse.linalg`'s. CG: ours is its own recurrence (one matvec per step, "
        "like `jax.scipy.sparse.linalg.cg`; lineax's CG, which optimistix uses, adds a matvec "
        "every 10 steps). Differences of a few per cent are within this machine's noise."
    )
    lines.append(
        "* Forward mode no slower than reverse mode for a scalar hyperparameter (`jvp` / "
        "`grad`): "
        + "; ".join(f"{p} {verdict([m['jvp_s'] / m['reverse_s']])}" for p, m in modes.items())
        + "."
    )
    lines.append("")
    return lines


def render_markdown(meta, rows, equal, modes) -> str:
    r, f = meta["ridge"], meta["fixed_point"]
    lines = [
        "# Hypergradients: bilevel vs jaxopt vs optimistix",
        "",
        f"Command: `.venv/bin/python benchmarks/hypergradient.py --repeats {meta['repeats']}`",
        "",
        f"float64; jax {meta['jax']}, jaxopt {meta['jaxopt']}, optimistix {meta['optimistix']}, "
        f"lineax {meta['lineax']}; {meta['device']} ({meta['cpu_count']} cores, shared with other "
        "jobs: expect ±20 % between runs). Medians of interleaved rounds after a warm-up call "
        "(rounds: "
        + ", ".join(f"{k} {v}" for k, v in meta["rounds"].items())
        + f"); the whole run took {meta['wall_seconds']:.0f} s.",
        "",
        f"* **ridge**: n = {r['n']}, d = {r['d']} (one λ per feature), validation n = "
        f"{r['n_val']}, κ(XᵀX + diag λ) = {r['condition_number']:.1f}; symmetric ∂₁F (CG).",
        f"* **fixed point** `z = tanh(W z + θ)`: dimension {f['dim']}, W = "
        f"{f['W']}, κ(∂₁F) = {f['condition_number']:.1f}, "
        f"‖∂₁F − ∂₁Fᵀ‖/‖∂₁F‖ = {f['asymmetry']:.2f}; non-symmetric ∂₁F (GMRES).",
        "",
        "Every variant receives the same exact inner solution, so the times are backward passes "
        "(the optimistix solvers also take one confirming step from it). Relative errors are "
        "against dense float64 solves.",
        "",
        *goals_summary(rows, equal, modes),
        "## At equal accuracy",
        "",
        "Each library's tolerance sweep (below), its time interpolated linearly in log(error) at a "
        "common relative error; ratio = bilevel's time / the other's (goal: ≤ 1.0). \"≤ t\": even "
        "the loosest tolerance of the sweep is more accurate than the target, so t is an upper "
        "bound on that library's time (and the ratio a bound accordingly).",
        "",
        "| problem | target rel. error | bilevel (ms) | jaxopt (ms) | optimistix (ms) "
        "| bilevel / jaxopt | bilevel / optimistix |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in equal:
        s, how = e["seconds"], e["how"]

        def cell(lib, s=s, how=how):
            return "not reached" if s[lib] is None else f"{how[lib]} {_ms(s[lib])}".strip()

        def ratio(other, e=e, how=how):
            r = e[f"ratio_to_{other}"]
            if r is None:
                return "—"
            bound = {("≤", ""): "≤ ", ("", "≤"): "≥ ", ("≤", "≤"): "~ "}.get(
                (how["bilevel"], how[other]), ""
            )
            return f"{bound}{r:.2f}"

        lines.append(
            f"| {e['problem']} | {e['target_error']:.0e} | {cell('bilevel')} | {cell('jaxopt')} "
            f"| {cell('optimistix')} | {ratio('jaxopt')} | {ratio('optimistix')} |"
        )
    lines += [
        "",
        "## Forward vs reverse mode (bilevel, one scalar hyperparameter)",
        "",
        "Ridge with one shared strength (CG, rtol 1e-6); the fixed point with `θ = s·θ₀` (GMRES, "
        "rtol 1e-6). jaxopt's rule is a `custom_vjp`: it has no forward mode.",
        "",
        "| problem | reverse `grad` (ms) | forward `jvp` (ms) | forward `jacfwd` (ms) "
        "| jvp / grad | rel. difference jvp vs grad |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p, m in modes.items():
        lines.append(
            f"| {p} | {_ms(m['reverse_s'])} | {_ms(m['jvp_s'])} | {_ms(m['jacfwd_s'])} "
            f"| {m['jvp_s'] / m['reverse_s']:.2f} | {m['forward_reverse_rel_diff']:.1e} |"
        )
    lines += [
        "",
        "## Every row",
        "",
        "| problem | library | method | time (ms) | rel. error |",
        "|---|---|---|---:|---:|",
    ]
    for row in rows:
        if row["problem"] not in ("ridge", "fixed point"):
            continue
        err = "—" if row["rel_error"] is None else f"{row['rel_error']:.1e}"
        lines.append(
            f"| {row['problem']} | {row['library']} | {row['method']} "
            f"| {_ms(row['seconds'])} | {err} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
