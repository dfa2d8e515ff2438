r"""Grouped convolutions whose double backward takes each term in one call.

PyTorch differentiates a convolution's backward (the second-order part of a
Hessian-vector product in reverse mode) with a routine that, for a grouped convolution,
takes the weight's term one group at a time: a depthwise convolution over ``C`` channels
becomes ``C`` small convolutions and a few more. On a DARTS supernet, whose separable
and dilated convolutions are depthwise, that routine is over 40 % of a cg(5) tick.

Under ``grouped_double_backward()`` each grouped ``conv2d`` records a node of its own.
Its backward computes the input's and the weight's gradients, each in one call: PyTorch's
convolution backward, except for a depthwise convolution on a CPU, where PyTorch's
kernels take 4-9x longer for 5x5 and dilated kernels than these equal ones: the input's
gradient at stride 1 as a convolution by the flipped kernel, the weight's as one
convolution with a group per (sample, channel). When that backward is itself recorded
(``create_graph=True``), the node it records differentiates the two bilinear maps
\(g_x = \mathrm{conv}^\top(g, w)\) and \(g_w = \mathrm{corr}(x, g)\) term by term, each
term one such call with all groups at once:

* by the output's gradient \(g\): two convolutions, of \(\bar g_x\) by \(w\) and of \(x\)
  by \(\bar g_w\);
* by the input \(x\): the input's gradient of a convolution with weight \(\bar g_w\);
* by the weight \(w\): the weight's gradient of a convolution of \(\bar g_x\).

These are the same derivatives (checked against PyTorch's in float64), from the same
saved tensors as PyTorch's nodes (the input, the weight and the output's gradient), so a
graph holds what it held. Outside the context nothing changes: a training step's
convolutions are PyTorch's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .products import _PLAIN  # a subclass (DTensor, ...) keeps its own convolution

_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _pair(value: int | Sequence[int]) -> list[int]:
    return [value, value] if isinstance(value, int) else [int(v) for v in value]


class _Geometry:
    """A 2-d convolution's stride, padding, dilation and groups."""

    __slots__ = ("dilation", "groups", "padding", "stride")

    def __init__(self, stride, padding, dilation, groups: int) -> None:
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups

    def conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def backward(
        self, grad: Tensor, x: Tensor, weight: Tensor, mask: Sequence[bool]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """The gradients by the input, weight and bias that ``mask`` asks for (a bias's
        only where there is one: autograd asks for none otherwise)."""
        by_x = self.input_gradient(grad, weight, x) if mask[0] else None
        by_w = self.weight_gradient(grad, x, weight) if mask[1] else None
        by_b = grad.sum((0, 2, 3)) if mask[2] else None
        return by_x, by_w, by_b

    def _depthwise(self, weight: Tensor, x_channels: int) -> bool:
        return weight.shape[1] == 1 and weight.shape[0] == x_channels == self.groups

    def input_gradient(self, grad: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        """The gradient by the input ``x`` (only its shape is read). A depthwise
        convolution of stride 1 is one convolution of ``grad`` by the flipped kernel (for
        dilated kernels PyTorch's transposed convolution is several times slower); others
        PyTorch's backward."""
        reach = [d * (k - 1) - p for d, k, p in zip(self.dilation, weight.shape[2:], self.padding)]
        if self.stride == [1, 1] and min(reach) >= 0 and self._depthwise(weight, x.shape[1]):
            return F.conv2d(grad, weight.flip(2, 3), None, 1, reach, self.dilation, self.groups)
        return self._aten(grad, x, weight, (True, False))[0]

    def weight_gradient(self, grad: Tensor, x: Tensor, weight: Tensor) -> Tensor:
        """The gradient by ``weight``. Depthwise on a CPU: one convolution of the input
        seen as one sample of ``N·C`` channels by the output's gradient as ``N·C`` kernels
        (stride and dilation swapped), summed over samples (PyTorch's kernel takes 4-9x
        longer for 5x5 and dilated kernels there); others, and any on a GPU, whose
        per-sample convolution would have kernels the size of an image, PyTorch's backward."""
        if x.device.type != "cpu" or not self._depthwise(weight, x.shape[1]):
            return self._aten(grad, x, weight, (False, True))[1]
        n, c = x.shape[:2]
        per_sample = F.conv2d(
            x.reshape(1, n * c, *x.shape[2:]),
            grad.reshape(n * c, 1, *grad.shape[2:]),
            None,
            self.dilation,
            self.padding,
            self.stride,
            n * c,
        )
        kh, kw = weight.shape[2:]
        per_sample = per_sample.reshape(n, c, *per_sample.shape[2:])[:, :, :kh, :kw]
        return per_sample.sum(0).unsqueeze(1)

    def _aten(self, grad: Tensor, x: Tensor, weight: Tensor, mask: Sequence[bool]) -> tuple:
        return torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            None,
            self.stride,
            self.padding,
            self.dilation,
            False,
            [0, 0],
            self.groups,
            [*mask, False],
        )


class _GroupedConv2d(torch.autograd.Function):
    """``conv2d``, its backward recorded as ``_GroupedConv2dBackward`` under create_graph."""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry):
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        return geometry.conv(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        mask = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # the backward is recorded: differentiated again
            found = _GroupedConv2dBackward.apply(grad, x, weight, ctx.geometry, mask)
        else:
            found = ctx.geometry.backward(grad, x, weight, mask)
        return (*found, None)


class _GroupedConv2dBackward(torch.autograd.Function):
    """A grouped convolution's gradients by its input, weight and bias (those ``mask``
    asks for) from the output's gradient; its own backward one call per term."""

    @staticmethod
    def forward(ctx, grad, x, weight, geometry, mask):
        ctx.save_for_backward(grad, x, weight)
        ctx.geometry = geometry
        return geometry.backward(grad, x, weight, mask)

    @staticmethod
    def backward(ctx, bar_x, bar_w, bar_b):
        grad, x, weight = ctx.saved_tensors
        geometry = ctx.geometry
        wants_grad, wants_x, wants_w = ctx.needs_input_grad[:3]
        by_grad = by_x = by_w = None
        if wants_grad:  # g_x = conv^T(g, w), g_w = corr(x, g), g_b = sum(g): linear in g
            terms = []
            if bar_x is not None:
                terms.append(geometry.conv(bar_x, weight))
            if bar_w is not None:
                terms.append(geometry.conv(x, bar_w))
            if bar_b is not None:
                terms.append(bar_b.view(1, -1, 1, 1).expand_as(grad))
            by_grad = sum(terms[1:], terms[0]) if terms else None
        if wants_x and bar_w is not None:  # g_w = corr(x, g): x's term, weight bar_w
            by_x = geometry.input_gradient(grad, bar_w, x)
        if wants_w and bar_x is not None:  # g_x = conv^T(g, w): w's term, input bar_x
            by_w = geometry.weight_gradient(grad, bar_x, weight)
        return by_grad, by_x, by_w, None, None


def _grouped(args: tuple, kwargs: dict) -> tuple | None:
    """``conv2d``'s ``(input, weight, bias, geometry)`` for a batched grouped convolution
    of plain tensors with numeric padding that needs a gradient; else ``None``."""
    given = dict(zip(_NAMES, args), **kwargs)
    x, weight, bias = given.get("input"), given.get("weight"), given.get("bias")
    groups, padding = given.get("groups", 1), given.get("padding", 0)
    if (
        groups == 1
        or isinstance(padding, str)
        or type(x) not in _PLAIN
        or type(weight) not in _PLAIN
        or (bias is not None and type(bias) not in _PLAIN)
        or x.dim() != 4
        or not (x.requires_grad or weight.requires_grad)
    ):
        return None
    geometry = _Geometry(given.get("stride", 1), padding, given.get("dilation", 1), groups)
    return x, weight, bias, geometry


class grouped_double_backward(TorchFunctionMode):
    """A context in which grouped ``conv2d`` calls record nodes whose double backward
    takes each term in one call (see the module's text); other calls run unchanged.
    ``recorded`` counts the nodes it recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Under a torch.func transform (vmap, grad, jvp) inside the objective, PyTorch's
        # own convolution: these nodes do not define the rules such transforms need.
        if func is torch.conv2d and torch.is_grad_enabled() and not _transformed():
            found = _grouped(args, kwargs)
            if found is not None:
                self.recorded += 1
                return _GroupedConv2d.apply(*found)
        return func(*args, **kwargs)


def _transformed() -> bool:
    """Whether a ``torch.func`` transform is active."""
    return torch._C._are_functorch_transforms_active()
