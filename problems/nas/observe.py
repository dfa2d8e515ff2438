"""What a search shows while it runs: accuracies observed without changing the search.

Every number here is computed inside ``mlo.observing``: BatchNorm normalises with the
observed batch's statistics (as the search objective does; running statistics from a few
hundred updates would make eval-mode numbers meaningless early in a search), and no
parameter, buffer, random generator or data position of the search changes. So the
accuracies on screen are all of one kind, and logging more or less often trains the same
model.
"""

from __future__ import annotations

from typing import Any

import torch

import mlo

from .data import loader
from .search import to_device
from .search_space import ArchitectureWeights, Supernet


def search_accuracies(engine: mlo.Engine, batch: Any) -> dict[str, float]:
    """Top-1 accuracy on the architecture level's current (validation) batch of the
    supernet level (``explainer`` or ``network``) and of the ``audience``, if any."""
    top = engine.problems[engine.graph.roots[0]]
    x, y = to_device(batch, top.params.tensors[0].device)
    correct = {}
    with engine.observing(), top.autocast():
        for name in ("explainer", "network"):
            if name in engine.problems:
                supernet = engine.problems[name].module
                correct[f"{name} acc"] = mlo.observe.correct(
                    supernet(x, top.module.normalized()), y
                )
        if "audience" in engine.problems:
            correct["audience acc"] = mlo.observe.correct(engine.problems["audience"].module(x), y)
    return {k: int(v) / len(y) for k, v in correct.items()}


def supernet_accuracy(
    level: mlo.Problem,
    supernet: Supernet,
    arch: ArchitectureWeights,
    data: torch.utils.data.Dataset,
    device: torch.device,
    batches: int,
    batch_size: int,
) -> float:
    """Top-1 accuracy of the supernet (current α) on the first ``batches`` batches of
    ``data`` in a fixed order.

    An observation (``mlo.observe.observing``): BatchNorm normalises with each
    batch's statistics, as the search objective does, and no buffer, random generator or
    data position of the search changes.
    """
    evaluation = loader(data, batch_size, shuffle=False, seed=0, drop_last=False, shard=False)
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with mlo.observing([supernet, arch]):
        supernet.train()
        weights = arch.normalized()
        for i, batch in enumerate(evaluation):
            if i >= batches:
                break
            x, y = to_device(batch, device)
            with level.autocast():
                correct += mlo.observe.correct(supernet(x, weights), y)
            total += len(y)
    return int(correct) / max(total, 1)
