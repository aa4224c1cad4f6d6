"""``bilevel``: bilevel optimization by implicit differentiation in JAX.

Public names:

* Linear solvers (``solver(matvec, b) -> x``, jaxopt's ``solve=`` signature): :class:`CG`,
  :class:`Neumann`, :class:`AdamQuadratic`, :class:`Dense`; their base
  :class:`AbstractLinearSolver`; :func:`relative_residual`, :class:`LinearSolution`.
* Implicit differentiation: :func:`custom_root`, :func:`hvp`.
* Inner solvers: :class:`OptaxMinimizer` (with :class:`InnerInfo`), :func:`argmin`,
  :func:`unrolled_argmin`, :func:`ridge_solution`.
* Operators: :func:`materialize`, :func:`largest_eigenvalue`.
"""

from bilevel.implicit_diff import custom_root, hvp
from bilevel.inner import InnerInfo, OptaxMinimizer, argmin, ridge_solution, unrolled_argmin
from bilevel.linear_solve import (
    CG,
    AbstractLinearSolver,
    AdamQuadratic,
    Dense,
    LinearSolution,
    Neumann,
    largest_eigenvalue,
    materialize,
    relative_residual,
)

__version__ = "0.1.0"

__all__ = [
    "CG",
    "AbstractLinearSolver",
    "AdamQuadratic",
    "Dense",
    "InnerInfo",
    "LinearSolution",
    "Neumann",
    "OptaxMinimizer",
    "argmin",
    "custom_root",
    "hvp",
    "largest_eigenvalue",
    "materialize",
    "relative_residual",
    "ridge_solution",
    "unrolled_argmin",
]
