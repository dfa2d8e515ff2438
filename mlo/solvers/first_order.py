from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..autodiff.linalg import Vector
from .base import Level, Solver, SolverResult, register


@register("first_order")
class FirstOrder(Solver):
    r"""\(J_{D,U}^\top v = 0\): the lower level is treated as independent of its uppers.

    The upper level then follows only its direct gradient \(\partial f_P / \partial\theta_P\).
    """

    zero_jacobian = True
    supports_total = True  # zero in either mode

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "vjp" in cls.__dict__:  # a subclass with its own product is not zero
            cls.zero_jacobian = False

    def products(self, unroll_steps: int) -> int:
        """None: nothing is differentiated."""
        return 0

    def vjp(self, level: Level, v: Vector, parents: Sequence[Sequence[Tensor]]) -> SolverResult:
        return SolverResult([[torch.zeros_like(t) for t in group] for group in parents])
