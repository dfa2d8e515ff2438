r"""Second-order products by forward-over-reverse differentiation.

``SecondOrder`` builds the gradient \(\nabla_x f\) once with ``create_graph=True`` and
differentiates it again for every product, so the gradient's graph (the forward
activations and what their double backward needs) stays alive for the whole solve.
``ForwardSecondOrder`` keeps nothing between products: each one evaluates \(f\) once
with \(x\) carrying a tangent \(v\) (``torch.autograd.forward_ad``) and backpropagates
once; the gradient's tangent is the product,

\[
H v = \frac{d}{d\varepsilon} \nabla_x f(x + \varepsilon v)\Big|_{\varepsilon = 0},
\qquad
\frac{\partial^2 f}{\partial y\, \partial x} v
= \frac{d}{d\varepsilon} \nabla_y f(x + \varepsilon v)\Big|_{\varepsilon = 0}.
\]

Peak memory is that of one training step with tangents, instead of a step plus the
retained double-backward graph; each product costs a forward and a backward pass, where
``SecondOrder``'s costs one double backward. The products are values, not differentiable
further: a nested level's solver, whose products an upper level differentiates, keeps
``SecondOrder``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from ..errors import LevelError, SetupError
from .linalg import Vector
from .products import EvaluatedSecondOrder, vjp


class ForwardSecondOrder(EvaluatedSecondOrder):
    """Hessian-vector and mixed products of ``objective(x)`` (a scalar function of the
    tensors ``x``, which may read other tensors ``y``), each by one forward-over-reverse
    pass; the interface of [`SecondOrder`][mlo.autodiff.SecondOrder] without the
    retained graph.

    Args:
        objective: ``f`` evaluated with ``x`` replaced by the tensors it is given.
        params: the tensors ``x`` at which the products are taken.
        average: the cross-rank average of a vector shaped like ``x`` (data parallel), or
            ``None``.
        name: the level, named when an operation has no forward-mode rule.
    """

    def __init__(
        self,
        objective: Callable[[Sequence[Tensor]], Tensor],
        params: Sequence[Tensor],
        average: Callable[[Vector], Vector] | None = None,
        name: str = "",
    ) -> None:
        self.objective = objective
        self.params = list(params)
        self._average = average
        self.name = name

    def _product(self, vector: Sequence[Tensor], wrt: Sequence[Tensor] | None) -> Vector:
        """The tangent of ``∇ f`` (by ``x`` when ``wrt`` is None, else by ``wrt``) along
        ``vector``."""
        with fwAD.dual_level():
            leaves = [p.detach().requires_grad_() for p in self.params]
            duals = [fwAD.make_dual(x, v.to(x.dtype)) for x, v in zip(leaves, vector)]
            try:
                loss = self.objective(duals)
            except (NotImplementedError, LevelError) as caught:
                error = caught.__cause__ if isinstance(caught, LevelError) else caught
                if not isinstance(error, NotImplementedError):
                    raise
                raise SetupError(
                    f"level {self.name!r}: ProblemConfig(hvp='forward') needs forward-mode "
                    f"rules for every operation of its objective, and one has none "
                    f"({str(error).splitlines()[0][:160]}); use hvp='reverse'"
                ) from error
            inputs = leaves if wrt is None else list(wrt)
            grads = vjp([loss], inputs) if loss.requires_grad else [None] * len(inputs)
            out = []
            for g, x in zip(grads, inputs):
                tangent = None if g is None else fwAD.unpack_dual(g).tangent
                out.append(torch.zeros_like(x) if tangent is None else tangent)
        return out
