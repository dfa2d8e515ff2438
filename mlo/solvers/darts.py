from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from ..autodiff import gradient
from ..autodiff.linalg import Vector, add, norm, scale
from .base import Level, Solver, SolverResult, register, split_by_parents


@register("darts")
class Darts(Solver):
    r"""The DARTS approximation (Liu et al., 2019).

    \(H^{-1} v\) is replaced by \(\xi v\) (one SGD step's worth of look-ahead), and the
    mixed second derivative by a central finite difference of the parents' gradients:

    \[
    J_{D,U}^\top v \approx -\xi\,
    \frac{\nabla_U f_D(\theta_D + r v) - \nabla_U f_D(\theta_D - r v)}{2r},
    \qquad r = \varepsilon / \lVert v \rVert
    \]

    ``xi`` defaults to D's learning rate. The perturbed objectives are evaluated with
    substituted tensors, so D's parameters are never written. On a nested level that asks
    for it (``ProblemConfig(jacobian="total")``, reading its own lower levels) the mixed
    product is that of D's total gradient, computed exactly; \(\xi\) stays. Left at its
    default, a nested level with ``darts`` (or ``sama``) uses the partial Jacobian: the
    nested term changes the hypergradient by less than 1 % of darts' own error, at a cost
    that compounds with depth (docs/concepts.md, "What the default is, and why").
    """

    epsilon: float = Field(0.01, gt=0, description="finite-difference step, divided by ‖v‖")
    xi: float | None = Field(None, gt=0, description="look-ahead scale; None = D's lr")

    supports_total: ClassVar[bool] = True
    total_by_default: ClassVar[bool] = False

    def products(self, unroll_steps: int) -> int:
        """Two gradients (the finite difference); when nested, the total gradient and its
        exact mixed product."""
        return 2

    def direction(self, level: Level, v: Vector) -> Vector:
        r"""What stands for \(H^{-1} v\) before the \(\xi\) scale: \(v\) itself for DARTS."""
        return v

    def vjp(self, level: Level, v: Vector, parents: Sequence[Sequence[Tensor]]) -> SolverResult:
        xi = level.default_step(self.xi, self.name, "xi")
        flat = [t for group in parents for t in group]
        v = self.direction(level, v)
        if level.total:
            # A nested level: the mixed product of its total gradient, taken exactly (a
            # finite difference of total gradients would cost two nested propagations).
            mixed = level.products().mixed(v, flat)
            return SolverResult(split_by_parents([-xi * m for m in mixed], parents))
        r = self.epsilon / norm(v).clamp_min(1e-30)
        theta = [p.detach() for p in level.params]
        step = scale(r, v)
        perturbed = add(theta, step)  # θ + r v
        create = level.create_graph
        plus = gradient(level.objective(perturbed), flat, create_graph=create)
        if create:  # differentiable: a fresh θ − r v
            perturbed = [t - s for t, s in zip(theta, step)]
        else:  # the plus graph is freed: the same storage becomes θ − r v
            torch._foreach_copy_(perturbed, theta)
            torch._foreach_sub_(perturbed, step)
        minus = gradient(level.objective(perturbed), flat, create_graph=create)
        coef = -xi / (2 * r)
        return SolverResult(
            split_by_parents([coef * (a - b) for a, b in zip(plus, minus)], parents)
        )
