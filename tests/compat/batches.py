"""What a Betty program's inner level is trained on, recorded for comparing two runs."""

from __future__ import annotations

import torch


def record_inner_batches(engine) -> list[torch.Tensor]:
    """Wrap the ``inner`` problem's ``training_step`` so that each call records its
    batch's targets; returns the list it fills."""
    inner = next(p for p in engine.problems if p.name == "inner")
    step, seen = inner.training_step, []

    def recorded(batch):
        seen.append(batch[1].clone())
        return step(batch)

    inner.training_step = recorded
    return seen


def updates(seen: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each update's batch: a solver's re-evaluations read the same batch again."""
    return [b for i, b in enumerate(seen) if i == 0 or not torch.equal(b, seen[i - 1])]
