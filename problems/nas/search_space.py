"""The DARTS supernet: mixed operations, search cells, and architecture weights.

The architecture weights live in their own module (``ArchitectureWeights``) so that
they can be a level of their own; the supernet receives them as an argument::

    logits = supernet(images, arch.normalized())

Optional partial-channel connections with edge normalisation (PC-DARTS, Xu et al., 2020):
each mixed operation sees only ``1/k`` of the channels (the rest bypass it), and each
node weights its incoming edges by a softmax over learned edge weights ``β``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import mlo

from .operations import PRIMITIVES, cell_channels, make_operation, preprocess

STEPS = 4  # intermediate nodes per cell


def edges_per_cell(steps: int = STEPS) -> int:
    """Node i (0-based) has 2 + i incoming edges: 2 + 3 + 4 + 5 = 14 for four nodes."""
    return sum(2 + i for i in range(steps))


class ArchitectureWeights(nn.Module):
    r"""\(\alpha\) for normal and reduction cells (edges × operations), and ``β`` per edge when
    partial channels with edge normalisation are used."""

    def __init__(
        self, steps: int = STEPS, edge_normalization: bool = False, init_scale: float = 1e-3
    ) -> None:
        super().__init__()
        k, n = edges_per_cell(steps), len(PRIMITIVES)
        self.steps = steps
        self.alpha_normal = nn.Parameter(init_scale * torch.randn(k, n))
        self.alpha_reduce = nn.Parameter(init_scale * torch.randn(k, n))
        if edge_normalization:
            self.beta_normal = nn.Parameter(init_scale * torch.randn(k))
            self.beta_reduce = nn.Parameter(init_scale * torch.randn(k))
        else:
            self.register_parameter("beta_normal", None)
            self.register_parameter("beta_reduce", None)

    def normalized(self) -> CellWeights:
        """Softmax over operations, and over each node's incoming edges for ``β``."""
        return CellWeights(
            F.softmax(self.alpha_normal, dim=-1),
            F.softmax(self.alpha_reduce, dim=-1),
            None if self.beta_normal is None else self._edge_softmax(self.beta_normal),
            None if self.beta_reduce is None else self._edge_softmax(self.beta_reduce),
        )

    def _edge_softmax(self, beta: torch.Tensor) -> torch.Tensor:
        parts, offset = [], 0
        for i in range(self.steps):
            parts.append(F.softmax(beta[offset : offset + 2 + i], dim=-1))
            offset += 2 + i
        return torch.cat(parts)

    def edge_strengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-edge, per-operation strengths used to derive a genotype."""
        w = self.normalized()
        normal, reduce = w.normal, w.reduce
        if w.edge_normal is not None:
            normal = normal * w.edge_normal[:, None]
            reduce = reduce * w.edge_reduce[:, None]
        return normal.detach(), reduce.detach()


@dataclass
class CellWeights:
    normal: torch.Tensor
    reduce: torch.Tensor
    edge_normal: torch.Tensor | None = None
    edge_reduce: torch.Tensor | None = None


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    r"""\(\sum_o w_o \cdot o(x)\) over the eight operations (on ``1/k`` of the channels
    with PC)."""

    def __init__(self, channels: int, stride: int, partial_channels: int = 1) -> None:
        super().__init__()
        if channels % partial_channels:
            raise mlo.SetupError(
                f"partial_channels={partial_channels} must divide the channel count {channels}"
            )
        self.k = partial_channels
        self.stride = stride
        c = channels // partial_channels
        ops = []
        for name in PRIMITIVES:
            op = make_operation(name, c, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        c = x.shape[1] // self.k
        active, bypass = x[:, :c], x[:, c:]
        out = sum(w * op(active) for w, op in zip(weights, self.ops))
        if self.stride == 2:
            bypass = F.max_pool2d(bypass, 2, 2)
        return channel_shuffle(torch.cat([out, bypass], dim=1), self.k)


class SearchCell(nn.Module):
    """A DARTS search cell: two preprocessed inputs, four nodes, and on every edge the
    mixed operation of all candidates weighted by the architecture's softmax."""

    def __init__(
        self,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        steps: int = STEPS,
        partial_channels: int = 1,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.pre0, self.pre1 = preprocess(
            c_prev_prev, c_prev, channels, reduction_prev, affine=False
        )
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(channels, stride, partial_channels))

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        edge_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.steps):
            terms = []
            for j, h in enumerate(states):
                out = self.edges[offset + j](h, weights[offset + j])
                if edge_weights is not None:
                    out = edge_weights[offset + j] * out
                terms.append(out)
            offset += len(states)
            states.append(sum(terms))
        return torch.cat(states[-self.steps :], dim=1)


class Supernet(nn.Module):
    """Stem, ``layers`` search cells (reduction at 1/3 and 2/3 depth), pooling, classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        layers: int = 8,
        init_channels: int = 16,
        steps: int = STEPS,
        stem_multiplier: int = 3,
        partial_channels: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c_stem, plan, c_out = cell_channels(layers, init_channels, stem_multiplier)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        self.cells = nn.ModuleList(
            SearchCell(c_pp, c_p, c, red, red_prev, steps, partial_channels)
            for c_pp, c_p, c, red, red_prev in plan
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_out, num_classes)

    def forward(self, x: torch.Tensor, weights: CellWeights) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                w, e = weights.reduce, weights.edge_reduce
            else:
                w, e = weights.normal, weights.edge_normal
            s0, s1 = s1, cell(s0, s1, w, e)
        return self.classifier(self.pool(s1).flatten(1))
