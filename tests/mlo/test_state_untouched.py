"""hypergradient() leaves every parameter, buffer, optimizer state and data position as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mlo

SOLVERS = ["first_order", "darts", "neumann", "cg", "unroll"]


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 1)
    )


def batches(seed: int, n: int = 4):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)) for _ in range(n)]


class Bottom(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return ((self.module(x) + 0.1 * self.middle.module(x) - y) ** 2).mean()


class Middle(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return ((self.module(x) * self.top.module(x) - y) ** 2).mean() + (
            self.bottom.module(x) ** 2
        ).mean()


class Top(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return ((self.middle.module(x) - y) ** 2).mean() + 0.5 * (self.bottom.module(x) ** 2).mean()


def build(solver: str) -> mlo.Engine:
    cfg = mlo.ProblemConfig(solver=solver, unroll_steps=2)
    mods = {n: net(i) for i, n in enumerate(["top", "middle", "bottom"])}
    problems = [
        Top(
            "top", mods["top"], torch.optim.Adam(mods["top"].parameters(), lr=1e-2), data=batches(0)
        ),
        Middle(
            "middle",
            mods["middle"],
            torch.optim.SGD(mods["middle"].parameters(), lr=1e-2, momentum=0.9),
            data=batches(1),
            config=cfg,
        ),
        Bottom(
            "bottom",
            mods["bottom"],
            torch.optim.Adam(mods["bottom"].parameters(), lr=1e-2),
            data=batches(2, n=3),
            config=cfg,
        ),
    ]
    return mlo.Engine(
        problems,
        {"top": ["middle", "bottom"], "middle": ["bottom"]},
        mlo.EngineConfig(progress=False),
    )


def snapshot(engine: mlo.Engine):
    out = {}
    for name, p in engine.problems.items():
        out[name] = {
            "params": {k: v.detach().clone() for k, v in p.module.named_parameters()},
            "buffers": {k: v.clone() for k, v in p.module.named_buffers()},
            "optim": copy.deepcopy(p.optimizer.state_dict()),
            "data": (p.stream.epoch, p.stream.position),
        }
    out["rng"] = torch.get_rng_state()
    return out


def assert_identical(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("solver", SOLVERS)
def test_hypergradient_leaves_state_bit_identical(solver):
    engine = build(solver)
    for _ in range(3):
        engine.step()
    before = snapshot(engine)
    for name in ("top", "middle"):
        grads = engine.hypergradient(name)
        assert set(grads) == {n for n, _ in engine.problems[name].module.named_parameters()}
        assert all(torch.isfinite(g).all() for g in grads.values())
    assert_identical(before, snapshot(engine))


@pytest.mark.parametrize("solver", SOLVERS)
def test_hypergradient_before_any_step_does_not_move_the_data(solver):
    engine = build(solver)
    before = snapshot(engine)
    engine.hypergradient("top")
    assert_identical(before, snapshot(engine))
    # The look-ahead batch is the one the first update then uses.
    engine.step()
    assert engine.problems["top"].stream.position == 1


def test_hypergradient_is_repeatable():
    engine = build("cg")
    engine.step()
    first = engine.hypergradient("top")
    second = engine.hypergradient("top")
    for k in first:
        assert torch.equal(first[k], second[k])
