r"""Second-order products by central differences of gradients.

``SecondOrder`` keeps the gradient's graph (the forward activations and what their double
backward needs) for the whole solve; ``ForwardSecondOrder`` carries tangents through a
forward pass. Both are exact, and both hold more than a training step does.
``FiniteDifferenceSecondOrder`` takes each product from two plain gradients, at
\(x \pm \varepsilon v\):

\[
H v \approx \frac{\nabla_x f(x + \varepsilon v) - \nabla_x f(x - \varepsilon v)}{2\varepsilon},
\qquad
\frac{\partial^2 f}{\partial y\, \partial x} v \approx
\frac{\nabla_y f(x + \varepsilon v) - \nabla_y f(x - \varepsilon v)}{2\varepsilon},
\]

with \(\varepsilon = r / \lVert v \rVert\), so that the two points lie at distance \(r\)
(``radius``) from \(x\); DARTS takes its mixed product this way with \(r = 0.01\). The
peak memory is that of one training step; each product costs two forward and backward
passes. It is an approximation: the truncation error is \(O(r^2)\) (the third derivative
of \(f\) along \(v\)) and the rounding error \(O(u / r)\) in a precision with unit
roundoff \(u\); ``tests/mlo/test_finite_difference.py`` measures both against the exact
products. Both evaluations draw the same random numbers (dropout, augmentation): the
random states (``mlo.durable.rng``) are restored before each and after both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..durable import rng
from .linalg import Vector, dot
from .products import EvaluatedSecondOrder, materialized, vjp


class FiniteDifferenceSecondOrder(EvaluatedSecondOrder):
    """Hessian-vector and mixed products of ``objective(x)`` by central differences of
    its gradient; the interface of [`SecondOrder`][mlo.autodiff.SecondOrder] without a
    retained graph.

    Args:
        objective: ``f`` evaluated with ``x`` replaced by the tensors it is given.
        params: the tensors ``x`` at which the products are taken.
        radius: the distance \\(r\\) of the two evaluation points from ``x``.
        average: the cross-rank average of a vector shaped like ``x`` (data parallel), or
            ``None``.
    """

    def __init__(
        self,
        objective: Callable[[Sequence[Tensor]], Tensor],
        params: Sequence[Tensor],
        radius: float = 0.01,
        average: Callable[[Vector], Vector] | None = None,
    ) -> None:
        self.objective = objective
        self.params = list(params)
        self.radius = radius
        self._average = average

    def _product(self, vector: Sequence[Tensor], wrt: Sequence[Tensor] | None) -> Vector:
        """The central difference of ``∇ f`` (by ``x`` when ``wrt`` is None, else by
        ``wrt``) along ``vector``."""
        vector = [v.to(p.dtype) for v, p in zip(vector, self.params)]
        length = dot(vector, vector).sqrt()
        # ε = r/‖v‖ on the device; a zero v gives a zero product (0 · finite).
        eps = self.radius / length.clamp_min(torch.finfo(length.dtype).tiny ** 0.5)
        grads = []
        state = rng.capture()  # both evaluations draw the same numbers; none is consumed
        try:
            for sign in (1.0, -1.0):
                rng.restore(state)
                with torch.no_grad():
                    points = [p.detach() + (sign * eps) * v for p, v in zip(self.params, vector)]
                leaves = [x.requires_grad_() for x in points]
                loss = self.objective(leaves)
                inputs = leaves if wrt is None else list(wrt)
                found = vjp([loss], inputs) if loss.requires_grad else [None] * len(inputs)
                grads.append(materialized(found, inputs))
        finally:
            rng.restore(state)
        scale = 0.5 / eps
        return [(plus - minus) * scale.to(plus.dtype) for plus, minus in zip(*grads)]
