"""Which level updates when.

Before a level ``U`` updates, each lower level ``L`` of U must have taken
``unroll_steps[L]`` updates since U's previous update (plus ``warmup_steps[L]`` before
U's first update), each of which recursively waits for L's own lower levels. Counts are
kept per edge, so a level shared by several uppers (a DAG) is not advanced again for an
upper whose requirement other updates in the same tick already met.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .graph import LevelGraph


@dataclass(frozen=True)
class Action:
    kind: Literal["reset", "update"]
    problem: str


class Schedule:
    def __init__(
        self,
        graph: LevelGraph,
        unroll_steps: Mapping[str, int],
        warmup_steps: Mapping[str, int],
        reset_each_inner_loop: Mapping[str, bool],
    ) -> None:
        self.graph = graph
        self.unroll_steps = dict(unroll_steps)
        self.warmup_steps = dict(warmup_steps)
        self.reset = dict(reset_each_inner_loop)
        self.since_upper: dict[tuple[str, str], int] = {e: 0 for e in graph.edges()}
        self.warmed: set[str] = set()

    def tick(self) -> list[Action]:
        """The actions of one engine tick: one update of every top level, with its lowers first."""
        plan: list[Action] = []
        for root in self.graph.roots:
            self._update(root, plan)
        return plan

    def _update(self, upper: str, plan: list[Action]) -> None:
        for lower in self.graph.children[upper]:
            need = self.unroll_steps[lower]
            if lower not in self.warmed:
                need += self.warmup_steps[lower]
                self.warmed.add(lower)
            if self.since_upper[(upper, lower)] < need and self.reset[lower]:
                plan.append(Action("reset", lower))
            while self.since_upper[(upper, lower)] < need:
                self._update(lower, plan)
        plan.append(Action("update", upper))
        for parent in self.graph.parents[upper]:
            self.since_upper[(parent, upper)] += 1
        for lower in self.graph.children[upper]:
            self.since_upper[(upper, lower)] = 0

    def state_dict(self) -> dict:
        return {
            "since_upper": {f"{u}->{lo}": c for (u, lo), c in self.since_upper.items()},
            "warmed": sorted(self.warmed),
        }

    def load_state_dict(self, state: dict) -> None:
        for key, count in state["since_upper"].items():
            upper, lower = key.split("->")
            self.since_upper[(upper, lower)] = count
        self.warmed = set(state["warmed"])
