r"""The exact Jacobian of a nested level by one solve over its subtree
(``ProblemConfig(jacobian="one_system")``; docs/concepts.md, "The one-system solve").

For a nested level \(D\) whose lower levels form a chain \(D \to C_1 \to \dots \to C_m\),
level \(k\) of the chain gets the Lagrangian \(L_k = f_k - \lambda_{k+1}^\top R_{k+1}\) over
\(z_k = (\theta_k, z_{k+1}, \lambda_{k+1})\), with \(R_{k+1} = \nabla_{z_{k+1}} L_{k+1}\) (at the
bottom \(R = \nabla f\)); \(\nabla_{z_k} L_k = 0\) holds exactly when the chain below \(k\)
is at its nested best response and \(\lambda_{k+1}\) solves
\(M_{k+1} \lambda = \nabla_{z_{k+1}} f_k\), \(M = \partial R / \partial z\) (symmetric). Then
\(J_{D,U}^\top w = -(\partial R_D / \partial \theta_U)^\top \mu\) with \(M_D \mu = (w, 0)\):
one MINRES solve per level of the chain, each product one backward pass through a graph
of one more derivative order per level, instead of solves nested inside each other's
products.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

from ..autodiff import materialized, vjp
from ..autodiff.linalg import Vector
from ..autodiff.minres import minres
from ..errors import SetupError
from ..graph import LevelGraph
from .evaluator import Evaluator


class OneSystem:
    r"""``J_{D,U}ᵀ w`` for a nested level ``name`` and its parents, by the subtree's solves.

    Args:
        evaluator: the levels' objectives and parameter replacements.
        graph: the level graph.
        name: the nested level \(D\).
        iterations: MINRES steps per solve (a system of \(n\) unknowns is exact after \(n\)).
    """

    def __init__(self, evaluator: Evaluator, graph: LevelGraph, name: str, iterations: int) -> None:
        self.evaluator = evaluator
        self.iterations = iterations
        # Data parallel: the system is linear in the levels' objectives, so the global
        # batch's products, right-hand sides and solutions are the ranks' averages.
        reducer = evaluator.reducer
        self.mean = (lambda vector: vector) if reducer is None else reducer.mean
        below = [n for n in graph.order if n in set(graph.descendants(name))]
        chain = [name, *below]
        for upper, lower in pairwise(chain):
            if lower not in graph.descendants(upper):
                raise SetupError(
                    f"problem {name!r}: jacobian='one_system' handles lower levels that form "
                    f"a chain, and {lower!r} is not below {upper!r}; use jacobian='total'"
                )
        self.names = chain
        self.counts = [len(evaluator.params(n)) for n in chain]
        # Tensors in z_k: level k's parameters, then z_{k+1} and λ_{k+1} (deepest first).
        self.sizes = [0] * len(chain)
        for k in reversed(range(len(chain))):
            below = 2 * self.sizes[k + 1] if k + 1 < len(chain) else 0
            self.sizes[k] = self.counts[k] + below

    # ------------------------------------------------------------------ z's layout

    def split(self, k: int, z: Sequence[Tensor]) -> tuple[list, list, list]:
        own, below = self.counts[k], self.sizes[k + 1]
        return list(z[:own]), list(z[own : own + below]), list(z[own + below :])

    def thetas(self, k: int, z: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        """The parameters of level k and every level below it, as held in ``z_k``."""
        if k == len(self.names) - 1:
            return {self.names[k]: list(z)}
        theta, below, _ = self.split(k, z)
        return {self.names[k]: theta, **self.thetas(k + 1, below)}

    # ------------------------------------------------------------------ the system

    def objective(self, name: str, values: dict[str, list[Tensor]]) -> Tensor:
        with self.evaluator.replaced(values):
            return self.evaluator.objective(name)

    def residual(self, k: int, z: Sequence[Tensor], above: dict[str, list[Tensor]]) -> Vector:
        """``R_k = ∇_{z_k} L_k``, differentiable, with the chain's levels above k at
        ``above`` (the other levels at their current parameters)."""
        values = {**above, **self.thetas(k, z)}
        lagrangian = self.objective(self.names[k], values)
        if k < len(self.names) - 1:
            theta, below, lam = self.split(k, z)
            inner = self.residual(k + 1, below, {**above, self.names[k]: theta})
            lagrangian = lagrangian - sum((l_ * r).sum() for l_, r in zip(lam, inner))
        grads = vjp([lagrangian], list(z), create_graph=True, retain_graph=True)
        return materialized(grads, list(z))

    def gradient(self, name: str, k: int, z: Sequence[Tensor], above: dict) -> Vector:
        """``∇_{z_k} f_name`` (zero in the λ entries, which no objective reads)."""
        leaves = [t.detach().requires_grad_() for t in z]
        f = self.objective(name, {**above, **self.thetas(k, leaves)})
        return materialized(vjp([f], leaves), leaves)

    def solve(self, residual: Vector, z: Sequence[Tensor], rhs: Vector) -> Vector:
        """``M⁻¹ rhs`` with ``M = ∂R/∂z`` (symmetric), by MINRES on its products."""
        outputs = [r for r in residual if r.requires_grad]
        keep = [r.requires_grad for r in residual]

        def matvec(x: Vector) -> Vector:
            vectors = [xi for xi, k in zip(x, keep) if k]
            if not outputs:
                return [torch.zeros_like(t) for t in z]
            products = vjp(outputs, list(z), vectors, retain_graph=True)
            return self.mean(materialized(products, list(z)))

        return minres(matvec, self.mean(list(rhs)), self.iterations)

    def point(self, k: int) -> list[Tensor]:
        """``z_k`` at the current state, each λ from its linear system (deepest first)."""
        theta = [t.detach() for t in self.evaluator.params(self.names[k])]
        if k == len(self.names) - 1:
            return theta
        below = [t.requires_grad_() for t in (x.detach().clone() for x in self.point(k + 1))]
        above = {n: [t.detach() for t in self.evaluator.params(n)] for n in self.names[: k + 1]}
        with torch.enable_grad():
            residual = self.residual(k + 1, below, above)
            rhs = self.gradient(self.names[k], k + 1, below, above)
            lam = self.solve(residual, below, rhs)
        return [*theta, *[t.detach() for t in below], *[t.detach() for t in lam]]

    def vjp(self, w: Vector, parents: Sequence[Sequence[Tensor]]) -> list[Vector]:
        """``J_{D,U}ᵀ w`` for each parent's parameter list in ``parents``."""
        with torch.enable_grad():
            z = [t.detach().clone().requires_grad_() for t in self.point(0)]
            residual = self.residual(0, z, {})
            rhs = [*[wi.detach() for wi in w], *[torch.zeros_like(t) for t in z[len(w) :]]]
            mu = self.solve(residual, z, rhs)
            flat = [t for group in parents for t in group]
            outputs = [r for r in residual if r.requires_grad]
            vectors = [m for m, r in zip(mu, residual) if r.requires_grad]
            grads = vjp(outputs, flat, vectors) if outputs and flat else [None] * len(flat)
        products = [-g for g in materialized(grads, flat)]
        out, start = [], 0
        for group in parents:
            out.append(products[start : start + len(group)])
            start += len(group)
        return out
