"""The evaluation network: a genotype's cells stacked and trained from scratch."""

from __future__ import annotations

import torch
from torch import nn

from .genotype import Genotype
from .operations import cell_channels, make_operation, preprocess


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole examples of a branch with probability ``drop_prob`` (scaling the rest)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    def __init__(
        self,
        genotype: Genotype,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0, self.pre1 = preprocess(
            c_prev_prev, c_prev, channels, reduction_prev, affine=True
        )
        cell = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.inputs = [index for _, index in cell]
        self.ops = nn.ModuleList(
            make_operation(name, channels, 2 if reduction and index < 2 else 1, affine=True)
            for name, index in cell
        )
        self.nodes = len(cell) // 2

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(self.nodes):
            total = 0
            for k in (2 * i, 2 * i + 1):
                h = self.ops[k](states[self.inputs[k]])
                if self.training and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Classifier on the feature map after the second reduction: 8×8 for 32×32 inputs,
    pooled 5×5 with stride 3 to 2×2 as in DARTS (7×7 for 224×224 inputs in the mobile
    setting, pooled with stride 2 to 2×2); a map that this pooling would leave smaller
    than 2×2 (small images: 4×4 for 16×16 digits, 7×7 for 28×28 Fashion-MNIST) is
    average-pooled to 2×2 instead."""

    def __init__(self, channels: int, num_classes: int, stride: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False)
        self.stride = stride
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(x)
        pooled = (min(x.shape[-2:]) - 5) // self.stride + 1  # the side DARTS' pooling leaves
        x = self.pool(x) if pooled >= 2 else nn.functional.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.classifier(x.flatten(1))


class EvalNetwork(nn.Module):
    """DARTS' CIFAR evaluation network. ``forward`` returns ``(logits, aux_logits)``;
    ``aux_logits`` is ``None`` unless training with the auxiliary head."""

    def __init__(
        self,
        genotype: Genotype,
        num_classes: int = 10,
        layers: int = 20,
        init_channels: int = 36,
        auxiliary: bool = True,
        stem_multiplier: int = 3,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c_stem, plan, c_out = cell_channels(layers, init_channels, stem_multiplier)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        self._add_cells(genotype, plan, c_out, num_classes, auxiliary, aux_stride=3)

    def _add_cells(self, genotype, plan, c_out, num_classes, auxiliary, aux_stride) -> None:
        self.cells = nn.ModuleList()
        self.aux_index = 2 * len(plan) // 3
        aux_channels = None
        for i, (c_pp, c_p, c, red, red_prev) in enumerate(plan):
            cell = EvalCell(genotype, c_pp, c_p, c, red, red_prev)
            self.cells.append(cell)
            if i == self.aux_index:
                aux_channels = len(cell.concat) * c
        self.auxiliary = AuxiliaryHead(aux_channels, num_classes, aux_stride) if auxiliary else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_out, num_classes)
        self.drop_path_prob = 0.0

    def stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two inputs of the first cell."""
        s = self.stem(x)
        return s, s

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0, s1 = self.stems(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary is not None and self.training:
                aux = self.auxiliary(s1)
        return self.classifier(self.pool(s1).flatten(1)), aux


class MobileNetwork(EvalNetwork):
    """DARTS' ImageNet evaluation network in the mobile setting (224×224 inputs): a
    two-stage strided stem (3×3 convolutions of stride 2 to 56×56, then one more to
    28×28), 14 cells with reductions at 1/3 and 2/3 of the depth (to 14×14 and 7×7), 48
    initial channels, and the auxiliary head after the second reduction. With DARTS_V2
    it has 4.7 M parameters and about 574 M multiply-adds (Liu et al., 2019, Table 3)."""

    def __init__(
        self,
        genotype: Genotype,
        num_classes: int = 1000,
        layers: int = 14,
        init_channels: int = 48,
        auxiliary: bool = True,
        in_channels: int = 3,
    ) -> None:
        nn.Module.__init__(self)
        c = init_channels
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, c // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        _, plan, c_out = cell_channels(layers, c, stem_multiplier=1, stem_reduces=True)
        self._add_cells(genotype, plan, c_out, num_classes, auxiliary, aux_stride=2)

    def stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Trainable parameters; the auxiliary head is left out, as in the papers' counts."""
    total = 0
    for name, p in model.named_parameters():
        if exclude_auxiliary and name.startswith("auxiliary."):
            continue
        total += p.numel()
    return total
