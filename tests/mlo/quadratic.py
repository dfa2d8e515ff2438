"""Nested quadratic multilevel problems with closed-form best responses.

Level X has parameters ``x`` and objective

    f_X = ½ xᵀA_X x + Σ_{U parent of X} xᵀB_{X,U} u + c_Xᵀx
          + Σ_{D below X} (½ dᵀQ_{X,D} d + q_{X,D}ᵀd)

so ``∂f_X/∂x`` does not involve X's lower levels and the best response — with X's lower
levels held fixed, the partial semantics (``ProblemConfig(jacobian="partial")``) — is the
linear map
``x*(parents) = −A_X⁻¹ (Σ_U B_{X,U} u + c_X)`` with Jacobian ``−A_X⁻¹ B_{X,U}``. The true
total derivative is autograd through those explicit solutions. Replacing ``A_X⁻¹`` by
another linear map gives the closed form of what an approximate solver must return.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import mlo

DTYPE = torch.float64


class Vector(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(value.clone())


def spd(n: int, gen: torch.Generator, low: float = 1.0, high: float = 3.0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    eig = torch.linspace(low, high, n, dtype=DTYPE)
    return q @ torch.diag(eig) @ q.T


class QuadraticSpec:
    """Random coefficients for a level graph given as ``{upper: [lowers]}``."""

    def __init__(self, dims: dict[str, int], deps: dict[str, list[str]], seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.dims, self.deps = dims, deps
        self.graph = mlo.LevelGraph.from_dependencies(list(dims), deps)
        self.A = {n: spd(d, gen) for n, d in dims.items()}
        self.c = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in dims.items()}
        self.B = {
            (lo, up): 0.5 * torch.randn(dims[lo], dims[up], generator=gen, dtype=DTYPE)
            for up, lo in self.graph.edges()
        }
        self.Q = {}
        self.q = {}
        for n in dims:
            for d in self.graph.descendants(n):
                self.Q[(n, d)] = spd(dims[d], gen, 0.5, 1.5)
                self.q[(n, d)] = torch.randn(dims[d], generator=gen, dtype=DTYPE)

    def objective(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        x = values[name]
        f = 0.5 * x @ self.A[name] @ x + self.c[name] @ x
        for up in self.graph.parents[name]:
            f = f + x @ self.B[(name, up)] @ values[up]
        for d in self.graph.descendants(name):
            f = f + 0.5 * values[d] @ self.Q[(name, d)] @ values[d] + self.q[(name, d)] @ values[d]
        return f

    def best_response(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        rhs = self.c[name].clone()
        for up in self.graph.parents[name]:
            rhs = rhs + self.B[(name, up)] @ values[up]
        return -torch.linalg.solve(self.A[name], rhs)

    def solve_lowers(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every level with parents at its exact best response, in topological order."""
        out = dict(values)
        for n in self.graph.order:
            if self.graph.parents[n]:
                out[n] = self.best_response(n, out)
        return out

    def total_derivative(
        self,
        top: str,
        values: dict[str, torch.Tensor],
        inverse: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """d f_top / d x_top with the lowers below ``top`` as functions of their parents.

        Values are the exact best responses; the Jacobian of each edge is
        ``−inverse(D, B_{D,U})`` (default: exact, ``A_D⁻¹``).
        """
        if inverse is None:

            def inverse(n: str, m: torch.Tensor) -> torch.Tensor:
                return torch.linalg.solve(self.A[n], m)

        live = {n: v.detach().clone() for n, v in values.items()}
        live[top] = live[top].requires_grad_(True)
        below = set(self.graph.descendants(top))
        for n in self.graph.order:
            if n not in below:
                continue
            value = live[n].detach()
            for up in self.graph.parents[n]:
                if up == top or up in below:
                    shift = live[up] - live[up].detach()
                    value = value - inverse(n, self.B[(n, up)]) @ shift
            live[n] = value
        f = self.objective(top, live)
        return torch.autograd.grad(f, live[top])[0]

    def build(
        self,
        solver,
        init: dict[str, torch.Tensor],
        lr: float | dict[str, float] = 0.1,
        jacobian: str | None = "partial",
        **engine_config,
    ):
        """An engine of these levels. Its Jacobians are the partial ones by default, the
        semantics this spec's closed forms have (a level's best response holds its lower
        levels fixed); ``tests/mlo/nested_quadratic.py`` has the nested truth."""
        spec = self

        class Level(mlo.Problem):
            def training_step(self, batch):
                values = {n: getattr(self, n).module.x for n in spec.dims if n != self.name}
                values[self.name] = self.module.x
                return spec.objective(self.name, values)

        problems = []
        for n in self.dims:
            module = Vector(init[n])
            rate = lr[n] if isinstance(lr, dict) else lr
            problems.append(
                Level(
                    n,
                    module,
                    torch.optim.SGD(module.parameters(), lr=rate),
                    config=mlo.ProblemConfig(solver=solver, jacobian=jacobian),
                )
            )
        return mlo.Engine(problems, self.deps, mlo.EngineConfig(progress=False, **engine_config))
