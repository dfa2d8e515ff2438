"""Hypergradient solvers: each gives ``J_{D,U}ᵀ v`` for all parents ``U`` of a level ``D``.

| name          | ``H⁻¹v`` replaced by                       |
|---------------|--------------------------------------------|
| ``first_order`` | 0                                        |
| ``darts``       | ``ξ v``, mixed product by finite difference |
| ``sama``        | ``ξ v / (√v̂ + ε)`` (Adam's map; SGD: ``ξ v``), finite difference |
| ``neumann``     | ``α Σ_{k≤K} (I − αH)^k v``                  |
| ``cg``          | CG solve of ``(H + ρI) w = v``              |
| ``unroll``      | exact reverse mode through D's last K steps |
| ``explicit``    | reverse mode through ``Problem.best_response`` |
"""

from .base import (
    ImplicitSolver,
    Level,
    Solver,
    SolverResult,
    available,
    register,
    resolve,
    split_by_parents,
)
from .cg import CG
from .darts import Darts
from .explicit import Explicit
from .first_order import FirstOrder
from .neumann import Neumann
from .sama import Sama
from .unroll import Unroll

__all__ = [
    "CG",
    "Darts",
    "Explicit",
    "FirstOrder",
    "ImplicitSolver",
    "Level",
    "Neumann",
    "Sama",
    "Solver",
    "SolverResult",
    "Unroll",
    "available",
    "register",
    "resolve",
    "split_by_parents",
]
