"""The audience: a fixed, human-designed CIFAR network (a ResNet)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

AudienceArch = Literal["resnet18", "resnet_small", "resnet_tiny"]

# blocks per stage and the width of the first stage
_SHAPES = {
    "resnet18": ((2, 2, 2, 2), 64),
    "resnet_small": ((1, 1, 1, 1), 32),
    "resnet_tiny": ((1, 1), 8),
}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR variant of ResNet (3×3 stem, no max-pool), widths doubling per stage."""

    def __init__(
        self, arch: AudienceArch = "resnet18", num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        if arch not in _SHAPES:
            raise ValueError(f"unknown audience {arch!r}; use one of {', '.join(_SHAPES)}")
        blocks, width = _SHAPES[arch]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        layers, c_in = [], width
        for stage, count in enumerate(blocks):
            c_out = width * 2**stage
            for i in range(count):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layers(self.stem(x))
        return self.classifier(F.adaptive_avg_pool2d(h, 1).flatten(1))
