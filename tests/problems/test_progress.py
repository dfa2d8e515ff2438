"""The progress display: a time left from the second update on, whatever an update takes,
and a line that says what the update under way is doing."""

from __future__ import annotations

import torch

import mlo
from problems.nas.loop import activity_of
from problems.progress import TrainingProgress


def test_the_time_left_shows_from_the_second_update_however_long_updates_take(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("problems.progress.time.perf_counter", lambda: clock[0])
    bar = TrainingProgress(10, "search", enabled=False, completed=2)  # resumed at update 2
    assert bar.eta(2) == "-:--:--"  # nothing timed in this process yet
    clock[0] += 600.0  # one update took ten minutes: no rolling window needed
    assert bar.eta(3) == "1:10:00"  # 7 left × 600 s
    clock[0] += 600.0
    assert bar.eta(4) == "1:00:00"
    assert bar.eta(10) == "0:00:00"


def test_the_engine_says_which_level_it_is_updating():
    outer_net, inner_net = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    seen: list[str | None] = []

    class Level(mlo.Problem):
        def training_step(self, batch):
            seen.append(engine.updating)
            other = self.inner if self.name == "outer" else self.outer
            return (self.module.weight - other.module.weight.sum()).pow(2).sum()

    outer = Level("outer", outer_net, torch.optim.SGD(outer_net.parameters(), lr=0.1))
    inner = Level(
        "inner",
        inner_net,
        torch.optim.SGD(inner_net.parameters(), lr=0.1),
        config=mlo.ProblemConfig(solver="cg", unroll_steps=2),
    )
    engine = mlo.Engine(
        [outer, inner], {"outer": ["inner"]}, mlo.EngineConfig(steps=1, progress=False)
    )
    assert engine.updating is None and activity_of(engine, 1) == ""
    engine.step()
    assert engine.updating is None  # between ticks
    assert seen[0] == "inner" and seen[-1] == "outer" and set(seen) == {"inner", "outer"}
    engine.updating = "outer"
    assert activity_of(engine, 5) == (
        "step 2/5: updating outer, its hypergradient through inner (cg)"
    )
    engine.updating = "inner"
    assert activity_of(engine, 5) == "step 2/5: updating inner"
