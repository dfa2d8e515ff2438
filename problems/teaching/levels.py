from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mlo


class Gates(nn.Module):
    """``H``: one gate logit per input feature; the teacher sees ``x ⊙ σ(H)``."""

    def __init__(self, features: int, init: float = 2.0) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((features,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.logits)


def mlp(features: int, classes: int, hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class Teacher(mlo.Problem):
    def logits(self, x: Tensor) -> Tensor:
        return self.module(self.relearn.module(x))

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.logits(x), y)


class Student(mlo.Problem):
    temperature: float = 2.0

    def training_step(self, batch):
        (x,) = batch
        targets = F.softmax(self.teacher.logits(x) / self.temperature, dim=-1)
        return F.kl_div(F.log_softmax(self.module(x), dim=-1), targets, reduction="batchmean")


class Relearn(mlo.Problem):
    lam: float = 1.0

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.student.module(x), y) + self.lam * F.cross_entropy(
            self.teacher.logits(x), y
        )


def build(
    features: int,
    classes: int,
    labelled: Iterable[Any],
    unlabelled: Iterable[Any],
    validation: Iterable[Any],
    *,
    solver: str = "unroll",
    lr: float = 0.1,
    gate_lr: float = 0.05,
    lam: float = 1.0,
) -> tuple[list[mlo.Problem], dict[str, list[str]]]:
    teacher_net, student_net, gates = (
        mlp(features, classes),
        mlp(features, classes),
        Gates(features),
    )
    config = mlo.ProblemConfig(solver=solver, unroll_steps=1)
    teacher = Teacher(
        "teacher",
        teacher_net,
        torch.optim.SGD(teacher_net.parameters(), lr=lr, momentum=0.9),
        data=labelled,
        config=config,
    )
    student = Student(
        "student",
        student_net,
        torch.optim.SGD(student_net.parameters(), lr=lr, momentum=0.9),
        data=unlabelled,
        config=config,
    )
    relearn = Relearn(
        "relearn", gates, torch.optim.Adam(gates.parameters(), lr=gate_lr), data=validation
    )
    relearn.lam = lam
    return [relearn, teacher, student], {"relearn": ["teacher", "student"], "teacher": ["student"]}
