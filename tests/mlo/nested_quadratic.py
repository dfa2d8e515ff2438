"""Coupled nested quadratics: levels whose objectives read their own lower levels, with
the nested truth computed without mlo.

Level X has parameters ``x`` and objective

    f_X = ½ xᵀA_X x + Σ_{U parent of X} xᵀB_{X,U} u + c_Xᵀx
          + Σ_{D below X} (½ dᵀQ_{X,D} d + q_{X,D}ᵀd + dᵀC_{X,D} x)

so X's stationarity involves its lower levels (through ``C`` directly, and through ``Q``
and ``q`` once they respond to ``x``). The nested best response (DESIGN §2) is
``x* = argmin_x F_X(x)``, ``F_X`` being ``f_X`` with every descendant of X at its own nested
best response. Every response is affine in its context, so ``F_X`` is quadratic in
``x`` and one Newton step from 0 is exact: ``x* = −(∇²F_X)⁻¹ ∇F_X(0)``, both by autograd
through the recursively solved descendants, with ``create_graph`` so that ``x*`` is a
differentiable function of the context. The truth of a total derivative is autograd
through those responses.
"""

from __future__ import annotations

import torch

from .quadratic import DTYPE, QuadraticSpec


class NestedQuadraticSpec(QuadraticSpec):
    """Random coefficients for a level graph given as ``{upper: [lowers]}``: those of
    :class:`QuadraticSpec`, and the couplings ``C``."""

    def __init__(
        self, dims: dict[str, int], deps: dict[str, list[str]], seed: int = 0, coupling=0.3
    ) -> None:
        super().__init__(dims, deps, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        self.C = {
            (n, d): coupling * torch.randn(dims[d], dims[n], generator=gen, dtype=DTYPE)
            for n in dims
            for d in self.graph.descendants(n)
        }

    def objective(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        f = super().objective(name, values)
        for d in self.graph.descendants(name):
            f = f + values[d] @ self.C[(name, d)] @ values[name]
        return f

    def solve_below(self, name: str, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``values`` with every descendant of ``name`` at its nested best response."""
        out = dict(values)
        for d in self.graph.descendants(name):  # topological order: parents first
            out[d] = self.nested_response(d, out)
        return out

    def nested_objective(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """``F_X``: ``f_X`` with X's descendants at their nested best responses."""
        return self.objective(name, self.solve_below(name, values))

    def total_hessian(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        zero = torch.zeros(self.dims[name], dtype=DTYPE)
        return torch.autograd.functional.hessian(
            lambda x: self.nested_objective(name, {**values, name: x}), zero, create_graph=True
        )

    def nested_response(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        zero = torch.zeros(self.dims[name], dtype=DTYPE, requires_grad=True)
        f = self.nested_objective(name, {**values, name: zero})
        (grad,) = torch.autograd.grad(f, zero, create_graph=True)
        return -torch.linalg.solve(self.total_hessian(name, values), grad)

    def solve_lowers(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every level with parents at its nested best response, detached."""
        out = dict(values)
        for n in self.graph.order:
            if self.graph.parents[n]:
                out[n] = self.nested_response(n, out)
        return {n: v.detach() for n, v in out.items()}

    def total_derivative(self, top: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """``d f_top / d x_top`` with the levels below ``top`` at their nested responses."""
        live = {n: v.detach().clone() for n, v in values.items()}
        live[top] = live[top].requires_grad_(True)
        return torch.autograd.grad(self.nested_objective(top, live), live[top])[0]

    def build(self, solver, init, lr=0.1, jacobian=None, **engine_config):
        """An engine of these levels, by default with the total Jacobians."""
        return super().build(solver, init, lr, jacobian, **engine_config)
