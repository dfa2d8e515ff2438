"""The eight candidate operations of the DARTS search space (Liu et al., 2019).

Every operation maps ``C`` channels to ``C`` channels; with ``stride=2`` it halves the
spatial size. ``affine`` controls the BatchNorm affine parameters: off during search (so
that the architecture weights alone scale the operations), on in the evaluation network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import mlo

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Sequential):
    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise dilated convolution, pointwise convolution, BatchNorm."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in,
                c_in,
                kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=c_in,
                bias=False,
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convolutions (the first carries the stride)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    """The ``none`` operation: zeros shaped like the (strided) output."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x * 0.0
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset stride-2 1×1 convolutions, concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        if c_out % 2:
            raise mlo.SetupError(
                f"FactorizedReduce needs an even number of channels, got {c_out}; use an even "
                "--init-channels"
            )
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        if shifted.shape[-1] * 2 < x.shape[-1] or shifted.shape[-2] * 2 < x.shape[-2]:
            shifted = nn.functional.pad(shifted, (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


Factory = Callable[[int, int, bool], nn.Module]

OPERATIONS: dict[str, Factory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(
        3, stride=stride, padding=1, count_include_pad=False
    ),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda c, stride, affine: (
        nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    ),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
}


def make_operation(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}; the DARTS space has {', '.join(PRIMITIVES)}")
    return OPERATIONS[name](channels, stride, affine)


def preprocess(
    c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool, affine: bool
) -> tuple[nn.Module, nn.Module]:
    """Bring the two cell inputs to ``channels`` channels and the same spatial size."""
    first = (
        FactorizedReduce(c_prev_prev, channels, affine)
        if reduction_prev
        else ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine)
    )
    second = ReLUConvBN(c_prev, channels, 1, 1, 0, affine)
    return first, second


def cell_channels(
    layers: int, init_channels: int, stem_multiplier: int = 3, stem_reduces: bool = False
):
    """Yield ``(c_prev_prev, c_prev, c, reduction, reduction_prev)`` for each cell, and the
    final channel count, following the DARTS layout: the channels double at the reduction
    cells placed at 1/3 and 2/3 of the depth. ``stem_reduces``: the stem's two outputs
    differ in size (ImageNet's two-stage strided stem), so the first cell reduces its
    first input as if it followed a reduction cell."""
    c_stem = stem_multiplier * init_channels
    c_pp, c_p, c = c_stem, c_stem, init_channels
    reduction_prev = stem_reduces
    plan = []
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c *= 2
        plan.append((c_pp, c_p, c, reduction, reduction_prev))
        c_pp, c_p = c_p, 4 * c
        reduction_prev = reduction
    return c_stem, plan, c_p
