r"""Second-order products in reverse mode, the gradient's graph built again for each.

``SecondOrder`` builds \(\nabla_x f\) once with ``create_graph=True`` and differentiates
that graph again for every product, so it keeps, for the whole solve, the forward's
saved activations and what the first backward saved for a double backward (about one
more set of activations); and a double backward through a graph it must keep gathers a
third set, the gradients by the activations, before it reaches the forward part.

``RecomputedSecondOrder`` keeps only the forward's graph: it evaluates \(f\) once for all
Hessian-vector products, and for each product builds \(\nabla_x f\) again from that graph
with ``create_graph=True`` and differentiates it. What that backward saves for the double
backward is handed out once (a saved-tensor hook that lets go of each tensor when the
double backward takes it), so it is freed as the double backward goes, while the
forward's graph stays for the next product: by the time the gradients by the activations
have been gathered, the first backward's saved tensors are gone. A product then holds the
forward's activations and one of the other two sets, about twice a training step, as
forward-over-reverse does (``mlo.autodiff.forward``), with reverse mode's operations plus
one backward pass per product, and without needing a forward-mode rule for any
operation. The values are reverse mode's: the same operations on the same numbers.

The forward's graph holds the other levels' parameters fixed (nothing is saved for
them), so a mixed product, which differentiates by them, evaluates \(f\) again, and lets
the kept forward go first (the two graphs are never held together). Given a
``forward_objective``, that evaluation is forward-over-reverse (``mlo.autodiff.forward``):
\(x\) carries \(v\) as its tangent and only the other levels' parameters require
gradients, so autograd saves what reaches them (and its tangents) and no gradient graph
is built on top, where reverse mode saves the forward's tensors for \(x\) and the other
levels both and then the first backward's. On the DARTS supernet it holds 0.82x reverse
mode's live tensors (146.5 MiB against 179.0 MiB; below a Hessian-vector product's peak,
which then sets the solve's), at 1.20x its time, one product a solve
(``python benchmarks/memory.py --graph-sizes``). Where an
operation has no forward-mode rule, or its rule fails, the mixed product is taken in
reverse mode, with the other levels' parameters free, from then on (``memo``). Every
evaluation starts from the random state of the first (``mlo.durable.rng``), so all
products see the same dropout masks, as the retained graph's products do. The products
are values, not differentiable further: a nested level's solver, whose products an
upper level differentiates, keeps ``SecondOrder``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import LevelError, first_line, is_out_of_memory
from .forward import MissingForwardRule, forward_product
from .linalg import Vector
from .products import Hold, ReplayedSecondOrder, holding, materialized, vjp

REVERSE_MIXED = "recompute.reverse_mixed"
"""``memo[REVERSE_MIXED]``: why a level's mixed products are taken in reverse mode
(forward mode failed on its objective)."""


class _Once:
    """A saved tensor that the double backward takes once; then nothing holds it here.

    It holds the tensor detached (the same storage, no autograd history: autograd
    restores that when it unpacks), since a node that saves its own output would
    otherwise hold itself through the holder, and a node the double backward does not
    reach would never be freed."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor) -> None:
        self.tensor: Tensor | None = tensor.detach()

    def take(self) -> Tensor:
        tensor, self.tensor = self.tensor, None
        if tensor is None:  # pragma: no cover - autograd unpacks a saved tensor once a pass
            raise RuntimeError("a saved tensor of a recomputed gradient was used twice")
        return tensor


def _handed_out_once() -> torch.autograd.graph.saved_tensors_hooks:
    """Saved-tensor hooks under which what autograd saves is freed when first used."""
    return torch.autograd.graph.saved_tensors_hooks(_Once, _Once.take)


class RecomputedSecondOrder(ReplayedSecondOrder):
    """Hessian-vector and mixed products of ``objective(x)`` (a scalar function of the
    tensors ``x``, which may read other tensors ``y``) from one kept forward evaluation,
    each by one backward pass with ``create_graph`` whose saved tensors the product's
    double backward frees as it goes; the interface of
    [`SecondOrder`][mlo.autodiff.SecondOrder] without the retained gradient graph.
    Its arguments are ``ReplayedSecondOrder``'s; ``hold`` keeps the graphs from saving
    anything for what a product does not differentiate. ``forward_objective``: the same
    function for a forward-mode evaluation (``objective`` may wrap operations in
    reverse-only rules, as ``mlo.autodiff.grouped_conv`` does), which makes the mixed
    products forward-over-reverse; ``None``: reverse mode. ``memo``: where a failed
    forward-mode mixed product is remembered (``memo[REVERSE_MIXED]``, why), so that it
    is tried once (the level's ``Level.memo``: once per level).
    """

    _forward: tuple[list[Tensor], Tensor] | None = None  # the kept (x's leaves, f)

    def __init__(
        self,
        objective: Callable[[Sequence[Tensor]], Tensor],
        params: Sequence[Tensor],
        average: Callable[[Vector], Vector] | None = None,
        hold: Hold | None = None,
        *,
        forward_objective: Callable[[Sequence[Tensor]], Tensor] | None = None,
        memo: dict[Any, Any] | None = None,
    ) -> None:
        super().__init__(objective, params, average, hold)
        self.forward_objective = forward_objective
        self.memo = {} if memo is None else memo

    def _product(self, vector: Sequence[Tensor], wrt: Sequence[Tensor] | None) -> Vector:
        """``d(∇_x f)/d(x or wrt) · vector``: by ``x`` from the kept forward, by ``wrt``
        from an evaluation of its own."""
        if wrt is not None:
            self._forward = None  # never held beside the mixed product's graph
            wrt = list(wrt)
            product = self._forward_mixed(vector, wrt)
            return self._mixed(vector, wrt) if product is None else product
        if self._forward is None:
            self._replay()  # the random numbers of the first evaluation
            leaves = [p.detach().requires_grad_() for p in self.params]
            with holding(self.hold, []):
                self._forward = leaves, self.objective(leaves)
        leaves, loss = self._forward
        return self._differentiate(loss, leaves, vector, leaves, keep_forward=True)

    def _forward_mixed(self, vector: Sequence[Tensor], wrt: list[Tensor]) -> Vector | None:
        """The mixed product by forward-over-reverse; ``None`` where forward mode fails
        on the objective (then and from then on, in reverse mode)."""
        if self.forward_objective is None or REVERSE_MIXED in self.memo:
            return None
        self._replay()
        try:
            return forward_product(self.forward_objective, self.params, vector, wrt, self.hold)
        except (MissingForwardRule, RuntimeError, LevelError) as error:
            if is_out_of_memory(error):
                raise
            # No or a failing forward-mode rule; any other error fails again in reverse
            # mode and is raised there. Kept: autograd's words, not forward mode's advice.
            cause = error.__cause__ if isinstance(error, MissingForwardRule) else error
            self.memo[REVERSE_MIXED] = first_line(cause or error)[:160]
            return None

    def _mixed(self, vector: Sequence[Tensor], wrt: list[Tensor]) -> Vector:
        self._replay()
        leaves = [p.detach().requires_grad_() for p in self.params]
        with holding(self.hold, wrt):
            loss = self.objective(leaves)
        return self._differentiate(loss, leaves, vector, wrt, keep_forward=False)

    def _differentiate(
        self,
        loss: Tensor,
        leaves: list[Tensor],
        vector: Sequence[Tensor],
        inputs: list[Tensor],
        keep_forward: bool,
    ) -> Vector:
        """``d(∇_leaves loss)/d inputs · vector``; the forward's graph kept or freed."""
        if not loss.requires_grad or not inputs:
            return [torch.zeros_like(x) for x in inputs]
        with holding(self.hold, [] if keep_forward else inputs), _handed_out_once():
            # The forward's graph outlives this pass: the double backward goes through it.
            grads = vjp([loss], leaves, retain_graph=True, create_graph=True)
        pairs = [
            (g, v.to(g.dtype)) for g, v in zip(grads, vector) if g is not None and g.requires_grad
        ]
        del loss, grads  # only the double backward's own references keep its graph
        if not pairs:
            return [torch.zeros_like(x) for x in inputs]
        outputs, vectors = zip(*pairs)
        return materialized(vjp(outputs, inputs, vectors, retain_graph=keep_forward), inputs)
