"""Second-order products of a level's *total* gradient, for levels that read their own
lower levels (``ProblemConfig(jacobian="total")``, DESIGN §2 "Nested levels").

A level ``D`` whose objective reads its descendants is trained by its total gradient
``g_D = dF_D/dθ_D`` (every descendant at its best response), so its best response is the
stationary point of ``g_D``, and by the implicit function theorem

    J_{D,U} = −(∂g_D/∂θ_D)⁻¹ ∂g_D/∂θ_U.

Both derivatives are *total* too: a change of ``θ_D`` or of ``θ_U`` moves D's
descendants, which moves ``g_D``. ``TotalSecondOrder`` builds ``g_D`` by the
adjoint propagation with ``create_graph`` (so it is differentiable), and gives
``(∂g_D/∂θ_D) x`` and ``(∂g_D/∂θ_U)ᵀ w`` as the total derivatives of the scalar ``xᵀ g_D``
(resp. ``wᵀ g_D``): its direct derivatives, plus its derivatives through D's descendants
carried up by adjoint propagation again. The solvers use it in place of
``mlo.autodiff.SecondOrder``, unchanged.

What is held fixed: the levels outside ``{D} ∪ descendants(D) ∪ parents(D)``. Where a
descendant of ``D`` has such a parent ``X`` (an ancestor of D that is not its parent, or
a sibling reading the same lower level), ``D``'s best response also depends on ``X``
and that dependence is not propagated: see docs/concepts.md ("Nested levels").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..autodiff.linalg import Vector
from .adjoint import AdjointPropagation


def _inner(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys))


class TotalSecondOrder:
    """Hessian-vector and mixed products of ``g_D``, level ``name``'s total gradient.

    ``propagation`` is the adjoint propagation that builds ``g_D`` and carries products
    up through D's descendants; ``parents`` are the levels whose parameters
    ``mixed`` differentiates by (D's parents in the propagation that asked);
    ``create_graph`` makes every product differentiable in turn (needed when an upper
    level is itself nested).
    """

    def __init__(
        self,
        propagation: AdjointPropagation,
        name: str,
        parents: Sequence[str],
        create_graph: bool = False,
    ) -> None:
        self.propagation, self.name, self.parents = propagation, name, list(parents)
        self.evaluator = propagation.evaluator
        self.create_graph = create_graph
        self.params = self.evaluator.params(name)
        loss = self.evaluator.objective(name)
        g = propagation(loss, name, [name], create_graph=True)[name]
        self.grad = [torch.zeros_like(p) for p in self.params] if g is None else g

    def _total(self, vector: Sequence[Tensor], targets: Sequence[str]) -> list[Vector | None]:
        scalar = _inner(self.grad, vector)
        if not isinstance(scalar, Tensor):
            return [None for _ in targets]
        found = self.propagation(
            scalar,
            self.name,
            targets,
            create_graph=self.create_graph,
            retain_graph=True,
        )
        return [found[t] for t in targets]

    def hvp(self, vector: Sequence[Tensor]) -> Vector:
        """``(∂g_D/∂θ_D) x``, total: D's descendants respond to ``θ_D``. Under data
        parallelism it is averaged over the ranks, as the partial products are: each
        rank's is its share of the global batch's (see
        ``mlo.parallel.distributed.Reducer.mean``)."""
        (product,) = self._total(vector, [self.name])
        if product is None:
            return [torch.zeros_like(p) for p in self.params]
        return self.evaluator.mean(self.name, product)

    def mixed(self, vector: Sequence[Tensor], others: Sequence[Tensor]) -> Vector:
        """``(∂g_D/∂θ_U)ᵀ w`` for the parents' parameters ``others`` (in the order of
        ``parents``), total: D's descendants respond to ``θ_U`` with ``θ_D`` held."""
        products = self._total(vector, self.parents)
        out: Vector = []
        for name, product in zip(self.parents, products):
            params = self.evaluator.values.get(name, self.evaluator.problems[name].params.tensors)
            out.extend([torch.zeros_like(p) for p in params] if product is None else product)
        if len(out) != len(others) or any(a.shape != b.shape for a, b in zip(out, others)):
            raise RuntimeError(
                f"nested products of level {self.name!r}: the parents' parameters asked for "
                "do not match its parents in the level graph"
            )
        return out
