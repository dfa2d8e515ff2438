"""Small problems shared by the engine tests."""

from __future__ import annotations

import torch
from torch import nn

import mlo


class Scalar(nn.Module):
    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([value], dtype=torch.float64))


class Pull(mlo.Problem):
    """f = ½ (x − Σ parents' x)² + ½ Σ watched x²: a level that tracks its uppers and
    whose objective reads the levels it watches."""

    parent_names: tuple[str, ...] = ()
    watched: tuple[str, ...] = ()

    def training_step(self, batch):
        target = sum((getattr(self, n).module.x for n in self.parent_names), torch.zeros(1))
        seen = sum(((getattr(self, n).module.x ** 2).sum() for n in self.watched), 0.0)
        return 0.5 * ((self.module.x - target) ** 2).sum() + 0.5 * seen


def problem(
    name: str,
    parents: tuple[str, ...] = (),
    value: float = 0.0,
    watched: tuple[str, ...] = (),
    **config,
) -> Pull:
    module = Scalar(value)
    p = Pull(
        name,
        module,
        torch.optim.SGD(module.parameters(), lr=0.1),
        config=mlo.ProblemConfig(**config),
    )
    p.parent_names = parents
    p.watched = watched
    return p


def engine(problems, deps, **config) -> mlo.Engine:
    return mlo.Engine(problems, deps, mlo.EngineConfig(progress=False, **config))
