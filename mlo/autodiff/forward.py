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

Two things keep a product at about twice a training step's memory (the forward's saved
activations and their tangents) rather than three times:

- each operation's tangent is cut from the autograd graph that computed it. PyTorch
  records the tangent computations (so that a tangent could be differentiated in reverse
  mode), and the saved activations' tangents would keep that graph alive; the backward
  pass needs the tangents' values only. For the same reason what autograd saves is held
  detached, its tangent cut (``_saved_detached``): an output saved as it is keeps its
  uncut tangent;
- only what the product differentiates requires gradients while \(f\) is evaluated: \(x\)
  for \(H v\) (the other levels' parameters held), the tensors \(y\) for the mixed product
  (\(x\) held, carrying the tangent). Autograd then saves nothing for the rest.

Every evaluation starts from the random state of the first (``mlo.durable.rng``), so all
products see the same dropout masks, as the retained graph's products do. The products
are values, not differentiable further: a nested level's solver, whose products an
upper level differentiates, keeps ``SecondOrder``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from ..errors import LevelError, SetupError
from .linalg import Vector
from .products import Hold, ReplayedSecondOrder, holding, materialized, vjp


class MissingForwardRule(SetupError):
    """An operation of the objective (or of its backward pass) has no forward-mode
    derivative, or PyTorch's fails."""


def forward_product(
    objective: Callable[[Sequence[Tensor]], Tensor],
    params: Sequence[Tensor],
    vector: Sequence[Tensor],
    wrt: Sequence[Tensor] | None,
    hold: Hold | None = None,
    name: str = "",
    *,
    by_params: bool = False,
) -> Vector:
    """The tangent of ``∇ f`` along ``vector`` at ``x = params``: by ``x`` itself when
    ``wrt`` is None (``H v``), else by the tensors ``wrt`` (the mixed product), and with
    ``by_params`` by ``x`` and then by ``wrt`` (both products, one list), from one forward
    and one backward pass.

    Raises:
        MissingForwardRule: an operation of ``f`` has no forward-mode rule.
    """
    with fwAD.dual_level():
        differentiated = wrt is None or by_params
        primals = [p.detach().requires_grad_(differentiated) for p in params]
        keep = [] if wrt is None else list(wrt)
        inputs = (primals if differentiated else []) + keep
        _load_forward_rules()
        duals = [fwAD.make_dual(x, v.to(x.dtype)) for x, v in zip(primals, vector)]
        try:
            # Tangents cut from the graphs that computed them, in results and in what
            # autograd saves (module docstring).
            with holding(hold, keep), _TangentsCut(), _saved_detached():
                loss = objective(duals)
            grads = vjp([loss], inputs) if loss.requires_grad else [None] * len(inputs)
        except (RuntimeError, LevelError) as caught:  # NotImplementedError included
            error = caught.__cause__ if isinstance(caught, LevelError) else caught
            if not _lacks_forward_rule(error):
                raise
            raise MissingForwardRule(
                f"level {name!r}: forward-over-reverse products need a working forward-mode "
                f"rule for every operation of its objective and its backward pass, and one "
                f"has none or fails ({str(error).splitlines()[0][:160]}); use "
                "ProblemConfig(hvp='reverse')"
            ) from error
        out = [None if g is None else fwAD.unpack_dual(g).tangent for g in grads]
    return materialized(out, inputs)


def _saved_detached() -> torch.autograd.graph.saved_tensors_hooks:
    """Saved-tensor hooks that hold what autograd saves detached, with its tangent cut
    from the graph that computed it (autograd gives the tensor back its history when it
    unpacks it, and the backward pass needs the tangent's value only). Saved as it is,
    an operation's output keeps its uncut tangent, and with it the graph of the tangents'
    computation, alive until the backward pass: a mixed product then held 1.16x the
    live tensors on the DARTS supernet (169.8 MiB against 146.5 MiB) and 1.23x on the
    small network of ``tests/mlo/test_forward_products.py``, with the same values to the
    bit. An objective that disables saved-tensor hooks
    (``torch.autograd.graph.disable_saved_tensors_hooks``) fails under them with its own
    message (recompute's mixed product then falls back to reverse mode)."""
    return torch.autograd.graph.saved_tensors_hooks(_detached, _as_saved)


def _detached(tensor: Tensor) -> Tensor:
    primal, tangent = fwAD.unpack_dual(tensor)
    if tangent is None:
        return tensor.detach()
    return fwAD.make_dual(primal.detach(), tangent.detach())  # detach() drops the tangent


def _as_saved(tensor: Tensor) -> Tensor:
    return tensor


@functools.cache
def _load_forward_rules() -> None:
    """Load torch's forward-mode decompositions once per process, as its first
    ``make_dual`` does, without the ``FutureWarning`` torch 2.14 raises there about its own
    use of ``torch.jit.script``: nothing a user of mlo can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        fwAD.make_dual(torch.zeros(()), torch.zeros(()))


def _lacks_forward_rule(error: BaseException | None) -> bool:
    """Whether ``error`` is autograd's refusal to take an operation's forward-mode
    derivative (in the objective or, differentiated, in its backward pass): a rule that
    does not exist, or one that fails. In torch 2.14 ``mse_loss``'s backward is one that
    fails where the target carries no tangent (it writes into the target's zero tangent);
    the same loss written as ``((pred - y) ** 2).mean()`` runs."""
    if isinstance(error, NotImplementedError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "forward AD" in text or "ZeroTensors are immutable" in text
    )


class ForwardSecondOrder(ReplayedSecondOrder):
    """Hessian-vector and mixed products of ``objective(x)`` (a scalar function of the
    tensors ``x``, which may read other tensors ``y``), each by one forward-over-reverse
    pass; the interface of [`SecondOrder`][mlo.autodiff.SecondOrder] without the
    retained graph.

    Its arguments are ``ReplayedSecondOrder``'s, and ``name``: the level, named when an
    operation has no forward-mode rule.
    """

    def __init__(
        self,
        objective: Callable[[Sequence[Tensor]], Tensor],
        params: Sequence[Tensor],
        average: Callable[[Vector], Vector] | None = None,
        name: str = "",
        hold: Hold | None = None,
    ) -> None:
        super().__init__(objective, params, average, hold)
        self.name = name

    def _product(self, vector: Sequence[Tensor], wrt: Sequence[Tensor] | None) -> Vector:
        """The tangent of ``∇ f`` (by ``x`` when ``wrt`` is None, else by ``wrt``) along
        ``vector``."""
        self._replay()  # the random numbers of the first evaluation
        return forward_product(self.objective, self.params, vector, wrt, self.hold, self.name)


class _TangentsCut(TorchFunctionMode):
    """Detaches every result's tangent from the autograd graph that computed it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return tree_map(_cut, func(*args, **(kwargs or {})))


def _cut(value):
    if isinstance(value, Tensor):
        primal, tangent = fwAD.unpack_dual(value)
        if tangent is not None and tangent.requires_grad:
            return fwAD.make_dual(primal, tangent.detach())
    return value
