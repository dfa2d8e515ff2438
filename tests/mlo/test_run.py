"""engine.run(): progress, metrics, logging, and per-level training options."""

from __future__ import annotations

import json

import torch
from torch import nn

import mlo

from .helpers import engine, problem


def two_levels(**engine_config):
    a = problem("a", value=1.0, watched=("b",))
    b = problem("b", parents=("a",), unroll_steps=2, solver="cg")
    return mlo.Engine([a, b], {"a": ["b"]}, mlo.EngineConfig(**engine_config))


def test_metrics_are_written_as_json_lines(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    e = two_levels(progress=False, steps=7, log_every=3, metrics_path=path)
    e.run()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 7]
    assert set(records[-1]["loss"]) == {"a", "b"}
    assert records[-1]["updates"] == {"a": 7, "b": 14}
    assert "cg_residual" in records[-1]["diagnostics"]["b"]
    assert all(isinstance(v, float) for v in records[-1]["loss"].values())


def test_nothing_is_printed_without_the_progress_bar(capsys):
    two_levels(progress=False, steps=3).run()
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_progress_bar_and_summary_table(capsys):
    two_levels(progress=True, steps=3, log_every=1).run()
    _, err = capsys.readouterr()
    assert "mlo run summary" in err
    assert "final loss" in err and "steps/s" in err


def test_gradient_clipping_bounds_the_update():
    class Far(mlo.Problem):
        def training_step(self, batch):
            return 0.5 * ((self.module.weight - 100.0) ** 2).sum()

    m = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        m.weight.zero_()
    p = Far(
        "far", m, torch.optim.SGD(m.parameters(), lr=1.0), config=mlo.ProblemConfig(grad_clip=0.5)
    )
    engine([p], {}).step()
    assert torch.allclose(m.weight.norm(), torch.tensor(0.5), atol=1e-5)


def test_learning_rate_scheduler_is_stepped_per_update():
    a = problem("a")
    b = problem("b", parents=("a",), unroll_steps=3)
    b.scheduler = torch.optim.lr_scheduler.StepLR(b.optimizer, step_size=1, gamma=0.5)
    e = engine([a, b], {"a": ["b"]})
    e.step()
    assert b.optimizer.param_groups[0]["lr"] == 0.1 * 0.5**3


def test_training_reaches_the_bilevel_solution():
    """a minimises (b*(a) − 3)² + 0.1·a² where b*(a) = a: the optimum is a = 3/1.1."""

    class Upper(mlo.Problem):
        def training_step(self, batch):
            return ((self.b.module.x - 3.0) ** 2).sum() + 0.1 * (self.module.x**2).sum()

    a = problem("a")
    a.__class__ = Upper
    b = problem("b", parents=("a",), unroll_steps=1, solver=mlo.solvers.CG(iterations=3))
    b.optimizer.param_groups[0]["lr"] = 1.0  # one step lands on b*(a) = a
    e = mlo.Engine([a, b], {"a": ["b"]}, mlo.EngineConfig(progress=False, steps=200))
    e.run()
    assert abs(float(a.module.x.detach()) - 3 / 1.1) < 1e-6
