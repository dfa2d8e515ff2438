"""Sinusoid regression tasks (Finn et al., 2017): y = A sin(x − φ), A ∈ [0.1, 5],
φ ∈ [0, π], x ∈ [−5, 5]."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor


def sample_tasks(
    n: int, shots: int, queries: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_support, y_support, x_query, y_query)``, shapes (n, shots|queries, 1)."""
    amplitude = 0.1 + 4.9 * torch.rand(n, 1, 1, generator=gen)
    phase = math.pi * torch.rand(n, 1, 1, generator=gen)
    xs = -5 + 10 * torch.rand(n, shots, 1, generator=gen)
    xq = -5 + 10 * torch.rand(n, queries, 1, generator=gen)
    return xs, amplitude * torch.sin(xs - phase), xq, amplitude * torch.sin(xq - phase)


class SinusoidTasks:
    """An endless stream of task batches, each yielded ``repeat`` times in a row (once per
    inner step, so that the inner loop adapts to one batch of tasks). Re-iterable and
    seeded: iterating again restarts the same stream."""

    def __init__(
        self,
        meta_batch: int,
        shots: int,
        queries: int,
        repeat: int,
        seed: int,
        batches: int = 10**9,
    ) -> None:
        self.meta_batch, self.shots, self.queries = meta_batch, shots, queries
        self.repeat, self.seed, self.batches = repeat, seed, batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.batches):
            batch = sample_tasks(self.meta_batch, self.shots, self.queries, gen)
            for _ in range(self.repeat):
                yield batch
