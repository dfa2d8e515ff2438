"""The record of a level's most recent optimizer steps, for the ``unroll`` solver."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .functional_optim import StepRule, capture_rules, capture_state


class _CurrentBatch:
    """Marks a record whose batch is read live: the level shares another level's batch
    (``batch_from``), whose state is tied to that level's current batch."""

    def __repr__(self) -> str:
        return "CURRENT_BATCH"


CURRENT_BATCH = _CurrentBatch()


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

    def state_dict(self) -> list[dict[str, Any]]:
        return [
            {
                "params": r.params,
                "optimizer_state": r.optimizer_state,
                "rules": [[rule.kind, [list(kv) for kv in rule.hyper]] for rule in r.rules],
                "batch": None if r.batch is CURRENT_BATCH else r.batch,
                "current_batch": r.batch is CURRENT_BATCH,
            }
            for r in self.records
        ]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.records.clear()
        for r in state:
            rules = [
                StepRule(kind, tuple((k, _hyper(v)) for k, v in hyper))
                for kind, hyper in r["rules"]
            ]
            batch = CURRENT_BATCH if r.get("current_batch") else r["batch"]
            self.records.append(StepRecord(r["params"], r["optimizer_state"], rules, batch))

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)


def _hyper(value: Any) -> Any:
    # betas are saved as a list; the step rule compares and unpacks them as a tuple
    return tuple(value) if isinstance(value, list) else value
