r"""Second-order products in reverse mode, the gradient's graph built again for each.

``SecondOrder`` builds \(\nabla_x f\) once with ``create_graph=True`` and differentiates
that graph again for every product, so it keeps, for the whole solve, the forward's
saved activations and what the first backward saved for a double backward (about one
more set of activations); and a double backward through a graph it must keep gathers a
third set, the gradients by the activations, before it reaches the forward part.

``RecomputedSecondOrder`` evaluates \(f\) and builds \(\nabla_x f\) again for each product
and lets that product's double backward free the graph as it goes: by the time the
gradients by the activations have been gathered, the first backward's saved tensors are
gone. A product then holds the forward's activations and one of the other two sets, about
twice a training step, as forward-over-reverse does (``mlo.autodiff.forward``), with
reverse mode's operations plus one forward and backward pass per product, and without
needing a forward-mode rule for any operation. The values are reverse mode's: the same
operations on the same numbers.

Every evaluation starts from the random state of the first (``mlo.durable.rng``), so all
products see the same dropout masks, as the retained graph's products do. The products
are values, not differentiable further: a nested level's solver, whose products an
upper level differentiates, keeps ``SecondOrder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from .linalg import Vector
from .products import ReplayedSecondOrder, materialized, vjp


class RecomputedSecondOrder(ReplayedSecondOrder):
    """Hessian-vector and mixed products of ``objective(x)`` (a scalar function of the
    tensors ``x``, which may read other tensors ``y``), each by one evaluation, one
    backward pass with ``create_graph`` and one double backward that frees the graph; the
    interface of [`SecondOrder`][mlo.autodiff.SecondOrder] without the retained graph.
    Its arguments are ``ReplayedSecondOrder``'s;
    ``hold`` keeps the graph from saving anything for what a product does not
    differentiate.
    """

    def _product(self, vector: Sequence[Tensor], wrt: Sequence[Tensor] | None) -> Vector:
        """``d(∇_x f)/d(x or wrt) · vector`` from a graph built for it and freed by it."""
        self._replay()  # the random numbers of the first evaluation
        keep = [] if wrt is None else list(wrt)
        holding = self.hold(keep) if self.hold is not None else nullcontext()
        leaves = [p.detach().requires_grad_() for p in self.params]
        inputs = leaves if wrt is None else keep
        with holding:
            loss = self.objective(leaves)
            if not loss.requires_grad:
                return [torch.zeros_like(x) for x in inputs]
            grads = vjp([loss], leaves, retain_graph=True, create_graph=True)
            pairs = [
                (g, v.to(g.dtype))
                for g, v in zip(grads, vector)
                if g is not None and g.requires_grad
            ]
            if not pairs or not inputs:
                return [torch.zeros_like(x) for x in inputs]
            outputs, vectors = zip(*pairs)
            del loss, grads  # only the double backward's own references keep the graph
            found = vjp(outputs, inputs, vectors)  # retain_graph=False: freed as it goes
        return materialized(found, inputs)
