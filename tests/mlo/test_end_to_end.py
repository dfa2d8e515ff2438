"""The classic hyperparameter problem: per-feature L2 weights of a logistic regression,
tuned on validation loss, beat the same training with the weights fixed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlo

FEATURES, INFORMATIVE = 30, 3


def make_split(n: int, gen: torch.Generator, w_true: torch.Tensor):
    x = torch.randn(n, FEATURES, generator=gen)
    logits = x @ w_true
    y = (torch.rand(n, generator=gen) < torch.sigmoid(logits)).float()
    return x, y


class LogisticRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, 1)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


class PenaltyWeights(nn.Module):
    def __init__(self, init: float) -> None:
        super().__init__()
        self.log_l2 = nn.Parameter(torch.full((FEATURES,), init))


class Classifier(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        penalty = (self.hyper.module.log_l2.exp() * self.module.linear.weight[0] ** 2).sum()
        return F.binary_cross_entropy_with_logits(self.module(x), y) + penalty


class Hyper(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.classifier.module(x), y)


def val_loss(model, split):
    with torch.no_grad():
        return float(F.binary_cross_entropy_with_logits(model(split[0]), split[1]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "solver",
    [mlo.solvers.CG(iterations=10), mlo.solvers.Neumann(iterations=20)],
    ids=["cg", "neumann"],
)
def test_tuned_per_feature_l2_improves_validation_loss(solver):
    gen = torch.Generator().manual_seed(0)
    w_true = torch.zeros(FEATURES)
    w_true[:INFORMATIVE] = torch.tensor([2.0, -2.0, 1.5])
    train, val = make_split(60, gen, w_true), make_split(400, gen, w_true)
    init, outer_steps, inner_steps = -5.0, 60, 25

    torch.manual_seed(0)
    fixed = LogisticRegression()
    fixed_hyper = PenaltyWeights(init)
    opt = torch.optim.SGD(fixed.parameters(), lr=0.5)
    for _ in range(outer_steps * inner_steps):
        x, y = train
        loss = (
            F.binary_cross_entropy_with_logits(fixed(x), y)
            + (fixed_hyper.log_l2.exp().detach() * fixed.linear.weight[0] ** 2).sum()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    baseline = val_loss(fixed, val)

    torch.manual_seed(0)
    model, hyper = LogisticRegression(), PenaltyWeights(init)
    classifier = Classifier(
        "classifier",
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        data=[train],
        config=mlo.ProblemConfig(solver=solver, unroll_steps=inner_steps),
    )
    tuner = Hyper("hyper", hyper, torch.optim.Adam(hyper.parameters(), lr=0.1), data=[val])
    engine = mlo.Engine(
        [tuner, classifier],
        {"hyper": ["classifier"]},
        mlo.EngineConfig(steps=outer_steps, progress=False),
    )
    engine.run()
    tuned = val_loss(model, val)

    assert tuned < baseline - 0.05, (tuned, baseline)
    # The penalty grew on the uninformative features more than on the informative ones.
    log_l2 = hyper.log_l2.detach()
    assert log_l2[INFORMATIVE:].mean() > log_l2[:INFORMATIVE].mean()
