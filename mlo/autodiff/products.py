"""Autograd building blocks shared by the engine and the solvers.

All products are matrix-free: a Hessian-vector product is one extra backward pass through
a gradient built with ``create_graph=True``; no dense Hessian is ever formed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from ..durable import rng
from .linalg import Vector

try:  # the C++ engine's entry point behind torch.autograd.grad (see vjp)
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - another torch
    _engine_run_backward = None

_PLAIN = (Tensor, nn.Parameter)

Hold = Callable[[Sequence[Tensor]], AbstractContextManager]
"""``hold(keep)``: a context in which no parameter except ``keep`` requires gradients."""


def holding(hold: Hold | None, keep: Sequence[Tensor]) -> AbstractContextManager:
    """``hold(keep)``, or a context that holds nothing when there is no ``hold``."""
    return hold(keep) if hold is not None else nullcontext()


def vjp(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor] | None = None,
    *,
    retain_graph: bool = False,
    create_graph: bool = False,
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)``: ``None``
    for an input the outputs do not depend on (``materialized`` makes it zeros).
    ``grad_outputs=None`` needs scalar outputs.

    For plain tensors it calls autograd's engine directly, without ``grad``'s argument
    handling (about 10 µs a call, several calls per update: the per-update overhead on
    small problems); tensor subclasses (``DTensor``, ...) go through ``torch.autograd.grad``.
    """
    outputs, inputs = tuple(outputs), tuple(inputs)
    if _engine_run_backward is None or not all(type(t) in _PLAIN for t in outputs + inputs):
        return torch.autograd.grad(
            outputs,
            inputs,
            grad_outputs,
            retain_graph=retain_graph,
            create_graph=create_graph,
            allow_unused=True,
        )
    if grad_outputs is None:
        grad_outputs = [torch.ones_like(o, memory_format=torch.preserve_format) for o in outputs]
    return _engine_run_backward(
        outputs,
        tuple(grad_outputs),
        retain_graph,
        create_graph,
        inputs,
        True,
        accumulate_grad=False,
    )


def materialized(grads: Sequence[Tensor | None], inputs: Sequence[Tensor]) -> Vector:
    """``grads`` with zeros in place of ``None`` (an input nothing depends on)."""
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def gradient(
    output: Tensor,
    inputs: Sequence[Tensor],
    *,
    grad_outputs: Sequence[Tensor] | Tensor | None = None,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Vector:
    """``d output / d inputs`` (or a vector-Jacobian product with ``grad_outputs``).

    Inputs the output does not depend on get zeros, never ``None``.
    """
    inputs = list(inputs)
    if not inputs:
        return []
    if not output.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    if isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    retain = create_graph if retain_graph is None else retain_graph
    grads = vjp([output], inputs, grad_outputs, retain_graph=retain, create_graph=create_graph)
    return materialized(grads, inputs)


def gradient_or_none(output: Tensor, inputs: Sequence[Tensor]) -> list[Tensor | None]:
    """``d output / d inputs``, with ``None`` for inputs the output does not depend on
    (a structural zero, known from the graph without looking at any value)."""
    inputs = list(inputs)
    if not inputs or not output.requires_grad:
        return [None] * len(inputs)
    return list(vjp([output], inputs))


class EvaluatedSecondOrder:
    """The interface of [`SecondOrder`][mlo.autodiff.SecondOrder] for products taken by
    evaluating the objective again for each one (nothing retained between them):
    subclasses supply ``_product(vector, wrt)``, the product of ``d(∇_wrt f)/dx`` with
    ``vector`` (``wrt=None``: by ``x`` itself)."""

    params: list[Tensor]
    _average: Callable[[Vector], Vector] | None

    def _product(self, vector: Sequence[Tensor], wrt: Sequence[Tensor] | None) -> Vector:
        raise NotImplementedError

    def hvp(self, vector: Sequence[Tensor]) -> Vector:
        """``H v`` with ``H = d²f/dx²`` (averaged over data-parallel ranks when an average
        is given)."""
        product = self._product(vector, None)
        return product if self._average is None else self._average(product)

    def mixed(self, vector: Sequence[Tensor], others: Sequence[Tensor]) -> Vector:
        """``d²f/dy dx · v`` for each tensor ``y`` in ``others``."""
        return self._product(vector, others)


class ReplayedSecondOrder(EvaluatedSecondOrder):
    """An ``EvaluatedSecondOrder`` whose every evaluation replays the random numbers of
    the first (``mlo.durable.rng``), so that all products see the same dropout masks, as
    the retained graph's products do: subclasses call ``_replay()`` before evaluating.

    Args:
        objective: ``f`` evaluated with ``x`` replaced by the tensors it is given.
        params: the tensors ``x`` at which the products are taken.
        average: the cross-rank average of a vector shaped like ``x`` (data parallel), or
            ``None``.
        hold: ``hold(keep)`` makes every parameter but ``keep`` stop requiring gradients
            for a block (``None``: nothing is held).
    """

    def __init__(
        self,
        objective: Callable[[Sequence[Tensor]], Tensor],
        params: Sequence[Tensor],
        average: Callable[[Vector], Vector] | None = None,
        hold: Hold | None = None,
    ) -> None:
        self.objective = objective
        self.params = list(params)
        self._average = average
        self.hold = hold
        self._state = rng.capture()

    def _replay(self) -> None:
        """Restore the random state the first evaluation started from."""
        rng.restore(self._state)


class SecondOrder:
    """Second-order products of one scalar objective ``f(x, y...)`` around its gradient in ``x``.

    Built once (one backward pass with ``create_graph=True``); then each Hessian-vector
    product ``H v = d²f/dx² v`` and each mixed product ``d²f/dy dx v`` costs one more
    backward pass through the stored gradient graph. With ``create_graph`` the products
    are differentiable in turn (third derivatives, for nested levels above).
    """

    def __init__(
        self,
        objective: Tensor,
        params: Sequence[Tensor],
        average: Callable[[Vector], Vector] | None = None,
        create_graph: bool = False,
    ) -> None:
        self.params = list(params)
        self.create_graph = create_graph
        self.grad = gradient(objective, self.params, create_graph=True)
        self._differentiable = [g.requires_grad for g in self.grad]
        self._average = average

    def _vjp(self, vector: Sequence[Tensor], inputs: Sequence[Tensor], retain: bool) -> Vector:
        outputs = [g for g, d in zip(self.grad, self._differentiable) if d]
        vectors = [v for v, d in zip(vector, self._differentiable) if d]
        if not outputs or not inputs:
            return [torch.zeros_like(x) for x in inputs]
        grads = vjp(
            outputs,
            inputs,
            vectors,
            retain_graph=retain or self.create_graph,
            create_graph=self.create_graph,
        )
        return materialized(grads, inputs)

    def hvp(self, vector: Sequence[Tensor]) -> Vector:
        """``H v`` with ``H = d²f/dx²`` (averaged over data-parallel ranks, when the level
        is replicated there: the Hessian of the global batch's objective)."""
        product = self._vjp(vector, self.params, retain=True)
        return product if self._average is None else self._average(product)

    def mixed(self, vector: Sequence[Tensor], others: Sequence[Tensor]) -> Vector:
        """``d²f/dy dx · v`` for each tensor ``y`` in ``others`` (the last use of the graph)."""
        return self._vjp(vector, others, retain=False)

    def cost(self, vector: Sequence[Tensor], inputs: Sequence[Tensor]) -> int:
        """The operations of one product of ``vector`` by ``inputs``
        (``mlo.autodiff.op_cost``: from the shapes, without a host synchronisation); the
        product is discarded."""
        from .op_cost import OperationCost

        with OperationCost() as counted:
            self._vjp(vector, inputs, retain=True)
        return counted.total

    def hvp_and_mixed(
        self, vector: Sequence[Tensor], others: Sequence[Tensor]
    ) -> tuple[Vector, Vector]:
        """``hvp(vector)`` and ``mixed(vector, others)`` from one backward pass (the graph
        is kept: the solver may ask for more)."""
        found = self._vjp(vector, [*self.params, *others], retain=True)
        product = found[: len(self.params)]
        if self._average is not None:  # the mixed part is not averaged, as in mixed()
            product = self._average(product)
        return product, found[len(self.params) :]
