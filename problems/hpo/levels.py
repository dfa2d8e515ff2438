"""The two levels of per-feature L2 tuning, and a constructor wiring them for the engine."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import mlo


class PerFeatureL2(nn.Module):
    """``λ``: one log penalty weight per input feature."""

    def __init__(self, features: int, init: float) -> None:
        super().__init__()
        self.log_l2 = nn.Parameter(torch.full((features,), float(init)))

    def penalty(self, weight: torch.Tensor) -> torch.Tensor:
        """``Σ_j exp(λ_j) Σ_c W[c, j]²`` for a weight of shape (classes, features)."""
        return (self.log_l2.exp() * (weight**2).sum(0)).sum()


class Classifier(mlo.Problem):
    """Lower level: multinomial logistic regression on the training split, penalised."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.module(x), y) + self.penalty.module.penalty(self.module.weight)


class PenaltyTuner(mlo.Problem):
    """Upper level: the classifier's cross-entropy on the validation split."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.classifier.module(x), y)


def build(
    features: int,
    classes: int,
    train: Iterable[Any],
    val: Iterable[Any],
    *,
    solver: str | mlo.solvers.Solver = "cg",
    inner_steps: int = 20,
    inner_lr: float = 0.5,
    outer_lr: float = 0.05,
    init_log_l2: float = -6.0,
) -> tuple[list[mlo.Problem], dict[str, list[str]]]:
    """The problems and dependencies for ``mlo.Engine``."""
    model = nn.Linear(features, classes)
    penalty = PerFeatureL2(features, init_log_l2)
    classifier = Classifier(
        "classifier",
        model,
        torch.optim.SGD(model.parameters(), lr=inner_lr),
        data=train,
        config=mlo.ProblemConfig(solver=solver, unroll_steps=inner_steps),
    )
    tuner = PenaltyTuner(
        "penalty", penalty, torch.optim.Adam(penalty.parameters(), lr=outer_lr), data=val
    )
    return [tuner, classifier], {"penalty": ["classifier"]}
