from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..autodiff.linalg import Vector
from ..errors import SetupError
from .base import Level, Solver, SolverResult, register, split_by_parents


@register("explicit")
class Explicit(Solver):
    r"""Reverse mode through a level's explicit solution \(\theta_D^* = g(\theta_U, \ldots)\).

    For levels that implement ``Problem.best_response``: the response is recomputed with
    the parents' current parameters and
    \(J_{D,U}^\top v = (\partial g / \partial\theta_U)^\top v\) comes from one backward
    pass. Exact, with no stationarity assumption.
    """

    needs_best_response: ClassVar[bool] = True

    def products(self, unroll_steps: int) -> int:
        """One backward pass through the recomputed response."""
        return 1

    def vjp(self, level: Level, v: Vector, parents: Sequence[Sequence[Tensor]]) -> SolverResult:
        if level.response is None:
            raise SetupError(
                f"solver 'explicit' on level {level.name!r}: the problem does not implement "
                "best_response(batch)"
            )
        flat = [t for group in parents for t in group]
        outputs = level.response()
        pairs = [(o, vi) for o, vi in zip(outputs, v) if o.requires_grad]
        if not pairs or not flat:
            return SolverResult([[torch.zeros_like(t) for t in group] for group in parents])
        grads = torch.autograd.grad(
            [o for o, _ in pairs],
            flat,
            grad_outputs=[vi for _, vi in pairs],
            create_graph=level.create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return SolverResult(split_by_parents(list(grads), parents))
