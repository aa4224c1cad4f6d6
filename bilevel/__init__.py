"""``bilevel``: bilevel optimization by implicit differentiation in JAX.

Public names:

* Linear solvers (``solver(matvec, b) -> x``, jaxopt's ``solve=`` signature): for a symmetric
  positive definite operator :class:`CG`, :class:`Neumann`, :class:`AdamQuadratic`; for any
  nonsingular one :class:`GMRES`, :class:`BiCGStab`, :class:`NormalCG`, :class:`LU` (lineax) and
  :class:`Dense`; their base :class:`AbstractLinearSolver`, the report :class:`LinearSolution`,
  :func:`relative_residual`.
* Implicit differentiation: :func:`custom_root`, :func:`custom_fixed_point`, :func:`hvp`.
* Inner solvers: :class:`OptaxMinimizer`, :class:`ClosedFormRidge`, :class:`GradientFixedPoint`
  (base :class:`AbstractMinimizer`); how to differentiate: :class:`Implicit`, :class:`Unrolled`
  (base :class:`AbstractAdjoint`); :func:`argmin` returning a :class:`Solution`
  (with :class:`InnerInfo` stats); :func:`unrolled_argmin`, :func:`ridge_solution`.
* Status: :class:`RESULTS` codes and :func:`result_message`.
* Operators: :func:`materialize`, :func:`largest_eigenvalue`.
* :func:`optax_step`: one optax update that also works under strict dtype promotion.

The implementation modules (``bilevel._*``) are private.
"""

from bilevel._implicit_diff import custom_fixed_point, custom_root, hvp
from bilevel._inner import (
    AbstractAdjoint,
    AbstractMinimizer,
    ClosedFormRidge,
    GradientFixedPoint,
    Implicit,
    InnerInfo,
    OptaxMinimizer,
    Solution,
    Unrolled,
    argmin,
    ridge_solution,
    unrolled_argmin,
)
from bilevel._linear_solve import (
    CG,
    GMRES,
    LU,
    AbstractLinearSolver,
    AdamQuadratic,
    BiCGStab,
    Dense,
    LinearSolution,
    Neumann,
    NormalCG,
    largest_eigenvalue,
    materialize,
    relative_residual,
)
from bilevel._optax import optax_step
from bilevel._results import RESULTS, result_message

__version__ = "0.2.0"

__all__ = [
    "CG",
    "GMRES",
    "LU",
    "RESULTS",
    "AbstractAdjoint",
    "AbstractLinearSolver",
    "AbstractMinimizer",
    "AdamQuadratic",
    "BiCGStab",
    "ClosedFormRidge",
    "Dense",
    "GradientFixedPoint",
    "Implicit",
    "InnerInfo",
    "LinearSolution",
    "Neumann",
    "NormalCG",
    "OptaxMinimizer",
    "Solution",
    "Unrolled",
    "argmin",
    "custom_fixed_point",
    "custom_root",
    "hvp",
    "largest_eigenvalue",
    "materialize",
    "optax_step",
    "relative_residual",
    "result_message",
    "ridge_solution",
    "unrolled_argmin",
]
