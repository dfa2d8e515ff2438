r"""The exact Jacobian of a nested level by one solve over its subtree
(``ProblemConfig(jacobian="one_system")``; docs/concepts.md, "The one-system solve").

For a nested level \(D\) whose lower levels form a tree (a chain
\(D \to C_1 \to \dots \to C_m\), or branches side by side), level \(k\) of the tree, with
branches \(c\) (its top lower levels), gets the Lagrangian
\(L_k = f_k - \sum_c \lambda_c^\top R_c\) over \(z_k = (\theta_k, (z_c, \lambda_c)_c)\), with
\(R_c = \nabla_{z_c} L_c\) (at a leaf \(R = \nabla f\)); \(\nabla_{z_k} L_k = 0\) holds exactly
when each branch below \(k\) is at its nested best response and each \(\lambda_c\) solves
\(M_c \lambda = \nabla_{z_c} f_k\), \(M = \partial R / \partial z\) (symmetric). Then
\(J_{D,U}^\top w = -(\partial R_D / \partial \theta_U)^\top \mu\) with \(M_D \mu = (w, 0)\):
one MINRES solve per level of the tree, each product one backward pass through a graph
of one more derivative order per level, instead of solves nested inside each other's
products.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    The levels below \(D\) form a tree: each level's lower levels split into the subtrees
    of its top lower levels (those below no other of its lower levels), which share no
    level. A chain is the tree with one branch; lower levels side by side are branches.

    Args:
        evaluator: the levels' objectives and parameter replacements.
        graph: the level graph.
        name: the nested level \(D\).
        iterations: MINRES steps per solve (a system of \(n\) unknowns is exact after \(n\)).
    """

    def __init__(self, evaluator: Evaluator, graph: LevelGraph, name: str, iterations: int) -> None:
        self.evaluator = evaluator
        self.iterations = iterations
        self.root = name
        # Data parallel: the system is linear in the levels' objectives, so the global
        # batch's products, right-hand sides and solutions are the ranks' averages.
        reducer = evaluator.reducer
        self.mean = (lambda vector: vector) if reducer is None else reducer.mean
        self.branches: dict[str, list[str]] = {}
        self._branch(graph, name)
        self.counts = {n: len(evaluator.params(n)) for n in self.branches}
        # Tensors in z_k: level k's parameters, then (z_c, λ_c) for each branch c.
        self.sizes: dict[str, int] = {}
        for n in reversed(list(self.branches)):
            self.sizes[n] = self.counts[n] + sum(2 * self.sizes[c] for c in self.branches[n])

    def _branch(self, graph: LevelGraph, name: str) -> None:
        """``self.branches[k]``: the top lower levels of k, for k in the subtree (top first)."""
        below = set(graph.descendants(name))
        tops = [
            c
            for c in graph.order
            if c in below and not any(c in graph.descendants(d) for d in below)
        ]
        for i, first in enumerate(tops):
            for second in tops[i + 1 :]:
                shared = ({first, *graph.descendants(first)}) & {second, *graph.descendants(second)}
                if shared:
                    raise SetupError(
                        f"problem {self.root!r}: jacobian='one_system' needs the levels below "
                        f"it to form a tree, and {sorted(shared)[0]!r} lies below both "
                        f"{first!r} and {second!r}; use jacobian='total'"
                    )
        self.branches[name] = tops
        for c in tops:
            self._branch(graph, c)

    # ------------------------------------------------------------------ z's layout

    def split(self, k: str, z: Sequence[Tensor]) -> tuple[list, list[tuple[str, list, list]]]:
        """Level k's own tensors in ``z_k``, and ``(c, z_c, λ_c)`` for each branch c."""
        own = self.counts[k]
        theta, parts, at = list(z[:own]), [], own
        for c in self.branches[k]:
            size = self.sizes[c]
            parts.append((c, list(z[at : at + size]), list(z[at + size : at + 2 * size])))
            at += 2 * size
        return theta, parts

    def thetas(self, k: str, z: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        """The parameters of level k and every level below it, as held in ``z_k``."""
        theta, parts = self.split(k, z)
        found = {k: theta}
        for c, below, _ in parts:
            found.update(self.thetas(c, below))
        return found

    # ------------------------------------------------------------------ the system

    def objective(self, name: str, values: dict[str, list[Tensor]]) -> Tensor:
        with self.evaluator.replaced(values):
            return self.evaluator.objective(name)

    def residual(self, k: str, z: Sequence[Tensor], above: dict[str, list[Tensor]]) -> Vector:
        """``R_k = ∇_{z_k} L_k``, differentiable, with the levels on the path above k at
        ``above`` (the other levels at their current parameters)."""
        lagrangian = self.objective(k, {**above, **self.thetas(k, z)})
        theta, parts = self.split(k, z)
        for c, below, lam in parts:
            inner = self.residual(c, below, {**above, k: theta})
            lagrangian = lagrangian - sum((l_ * r).sum() for l_, r in zip(lam, inner))
        grads = vjp([lagrangian], list(z), create_graph=True, retain_graph=True)
        return materialized(grads, list(z))

    def gradient(self, name: str, k: str, z: Sequence[Tensor], above: dict) -> Vector:
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

    def point(self, k: str, path: Sequence[str] = ()) -> list[Tensor]:
        """``z_k`` at the current state, each λ from its linear system (deepest first);
        ``path``: the levels from the root down to k's parent."""
        theta = [t.detach() for t in self.evaluator.params(k)]
        found = list(theta)
        above = {n: [t.detach() for t in self.evaluator.params(n)] for n in (*path, k)}
        for c in self.branches[k]:
            below = [
                t.requires_grad_() for t in (x.detach().clone() for x in self.point(c, (*path, k)))
            ]
            with torch.enable_grad():
                residual = self.residual(c, below, above)
                rhs = self.gradient(k, c, below, above)
                lam = self.solve(residual, below, rhs)
            found += [*[t.detach() for t in below], *[t.detach() for t in lam]]
        return found

    def vjp(self, w: Vector, parents: Sequence[Sequence[Tensor]]) -> list[Vector]:
        """``J_{D,U}ᵀ w`` for each parent's parameter list in ``parents``."""
        with torch.enable_grad():
            z = [t.detach().clone().requires_grad_() for t in self.point(self.root)]
            residual = self.residual(self.root, z, {})
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
