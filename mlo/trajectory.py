"""The record of a level's most recent optimizer steps, for the ``unroll`` solver."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .functional_optim import StepRule, capture_rules, capture_state


@dataclass
class StepRecord:
    """The state just before one update, and what that update used."""

    params: list[Tensor]
    optimizer_state: list[dict[str, Tensor]]
    rules: list[StepRule]
    batch: Any


class Trajectory:
    """A ring buffer of a level's last ``length`` updates."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.records: deque[StepRecord] = deque(maxlen=length)

    def record(self, optimizer: torch.optim.Optimizer, params: list[Tensor], batch: Any) -> None:
        """Call just before ``optimizer.step()`` is applied to ``params`` with ``batch``."""
        self.records.append(
            StepRecord(
                params=[p.detach().clone() for p in params],
                optimizer_state=capture_state(optimizer, params),
                rules=capture_rules(optimizer, params),
                batch=batch,
            )
        )

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)
