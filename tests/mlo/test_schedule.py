"""The schedule: unroll steps, DAG sharing, warm-up, resets; and describe()."""

from __future__ import annotations

import mlo
from mlo.schedule import Schedule

from .helpers import engine, problem


def plan(deps, unroll=None, warmup=None, reset=None, ticks=1):
    names = sorted({n for u, ls in deps.items() for n in [u, *ls]})
    graph = mlo.LevelGraph.from_dependencies(names, deps)
    sched = Schedule(
        graph,
        {n: (unroll or {}).get(n, 1) for n in names},
        {n: (warmup or {}).get(n, 0) for n in names},
        {n: (reset or {}).get(n, False) for n in names},
    )
    out = []
    for _ in range(ticks):
        out.append(
            [a.problem if a.kind == "update" else f"reset:{a.problem}" for a in sched.tick()]
        )
    return out


def test_each_lower_takes_unroll_steps_between_upper_updates_recursively():
    (tick,) = plan({"a": ["b"], "b": ["c"]}, unroll={"b": 2, "c": 3})
    assert tick == ["c", "c", "c", "b", "c", "c", "c", "b", "a"]


def test_shared_lower_level_is_not_advanced_twice_in_a_tick():
    # LeaSE's shape: relearn → explainer, relearn → explain, explainer → explain, explain → audience
    deps = {"relearn": ["explainer", "explain"], "explainer": ["explain"], "explain": ["audience"]}
    ticks = plan(deps, ticks=2)
    assert ticks == [["audience", "explain", "explainer", "relearn"]] * 2


def test_two_top_levels_each_update_once_per_tick():
    ticks = plan({"a": ["c"], "b": ["c"]}, unroll={"c": 2}, ticks=2)
    assert ticks == [["c", "c", "a", "b"], ["c", "c", "a", "b"]]


def test_warmup_runs_once_before_the_first_upper_update():
    ticks = plan({"a": ["b"]}, unroll={"b": 2}, warmup={"b": 3}, ticks=2)
    assert ticks == [["b"] * 5 + ["a"], ["b", "b", "a"]]


def test_reset_comes_before_each_inner_loop():
    ticks = plan({"a": ["b"]}, unroll={"b": 2}, reset={"b": True}, ticks=2)
    assert ticks == [["reset:b", "b", "b", "a"]] * 2


def test_engine_follows_the_schedule_and_counts_updates():
    a = problem("a")
    b = problem("b", parents=("a",), unroll_steps=3, warmup_steps=2)
    e = engine([a, b], {"a": ["b"]}, steps=4)
    e.run()
    assert e.updates == {"a": 4, "b": 2 + 3 * 4}
    assert e.tick == 4


def test_reset_hook_is_called_by_the_engine():
    calls = []
    a = problem("a")
    b = problem("b", parents=("a",), unroll_steps=2, reset_each_inner_loop=True)
    b.reset = lambda: calls.append(b.updates_seen if hasattr(b, "updates_seen") else None)
    e = engine([a, b], {"a": ["b"]})
    e.step()
    e.step()
    assert len(calls) == 2


def test_default_reset_reinitialises_the_module_and_clears_optimizer_state():
    import torch
    from torch import nn

    class Fit(mlo.Problem):
        def training_step(self, batch):
            return ((self.module(torch.ones(1, 2)) - 5.0) ** 2).sum()

    torch.manual_seed(0)
    m = nn.Linear(2, 1)
    p = Fit("p", m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    e = engine([p], {})
    for _ in range(5):
        e.step()
    trained = m.weight.detach().clone()
    assert p.optimizer.state
    p.reset()
    assert not torch.equal(trained, m.weight.detach())
    assert not p.optimizer.state


def test_describe_prints_graph_solvers_and_schedule(capsys):
    a = problem("a")
    b = problem("b", parents=("a",), unroll_steps=2, solver=mlo.solvers.CG(iterations=4))
    c = problem("c", parents=("b",), unroll_steps=3, solver="neumann")
    e = engine([a, b, c], {"a": ["b"], "b": ["c"]})
    text = e.describe()
    assert capsys.readouterr().out.strip() == text
    solver = "cg(iterations=4, tol=1e-10, ridge=0.0, fuse_mixed=auto)"
    assert f"b: solver={solver} unroll_steps=2" in text
    assert "a: top level (no solver: nothing above reads it) lowers=[b]" in text
    assert "a: solver" not in text  # a top level's solver is never used
    assert "a → b" in text and "b → c" in text
    assert "tick 1: c×3 → b → c×3 → b → a" in text
    assert e.updates == {"a": 0, "b": 0, "c": 0}  # describe() trains nothing
