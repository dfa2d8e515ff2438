from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mlo


def symmetric_noise(labels: Tensor, rate: float, classes: int, seed: int) -> Tensor:
    """Replace a ``rate`` fraction of the labels by a different class, uniformly."""
    gen = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=gen) < rate
    shift = torch.randint(1, classes, (len(labels),), generator=gen)
    return torch.where(flip, (labels + shift) % classes, labels)


class WeightNet(nn.Module):
    """``V(ℓ; Θ)``: a one-hidden-layer network from a loss value to a weight in (0, 1)."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses.unsqueeze(-1))).squeeze(-1)


class NoisyClassifier(mlo.Problem):
    """Lower level: the classifier on noisy labels, each example's loss weighted by V."""

    def training_step(self, batch):
        x, y = batch
        losses = F.cross_entropy(self.module(x), y, reduction="none")
        weights = self.weighting.module(losses.detach())
        # normalised per batch (as in the paper's code): only relative weights matter
        return (weights * losses).sum() / (weights.sum() + 1e-8)


class MetaWeighting(mlo.Problem):
    """Upper level: the classifier's loss on the clean meta-set."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.classifier.module(x), y)


def classifier_net(features: int, classes: int, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def build(
    features: int,
    classes: int,
    noisy_train: Iterable[Any],
    clean_meta: Iterable[Any],
    *,
    solver: str = "unroll",
    lr: float = 0.1,
    meta_lr: float = 1e-3,
) -> tuple[list[mlo.Problem], dict[str, list[str]]]:
    net, weigher = classifier_net(features, classes), WeightNet()
    classifier = NoisyClassifier(
        "classifier",
        net,
        torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4),
        data=noisy_train,
        config=mlo.ProblemConfig(solver=solver, unroll_steps=1),
    )
    weighting = MetaWeighting(
        "weighting",
        weigher,
        torch.optim.Adam(weigher.parameters(), lr=meta_lr, weight_decay=1e-4),
        data=clean_meta,
    )
    return [weighting, classifier], {"weighting": ["classifier"]}
