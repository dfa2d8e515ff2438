"""On a two-level problem where betty-ml 0.1.1 is right (Neumann), both libraries agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlo

betty = pytest.importorskip("betty", reason="betty-ml is a dev extra: pip install -e '.[dev]'")
from betty.configs import Config, EngineConfig  # noqa: E402
from betty.engine import Engine as BettyEngine  # noqa: E402
from betty.problems import ImplicitProblem  # noqa: E402

ITERATIONS, ALPHA = 5, 0.05


def data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=gen, dtype=torch.float64)
    y = x[:, :1] - 0.5 * x[:, 1:2] + 0.1 * torch.randn(32, 1, generator=gen, dtype=torch.float64)
    return x, y


class Decay(nn.Module):
    """Per-weight log L2 penalty: the upper level's parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.log_decay = nn.Parameter(torch.linspace(-2, 0, 6, dtype=torch.float64))


def models():
    torch.manual_seed(0)
    return nn.Linear(6, 1).double(), Decay()


def inner_loss(model, decay, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean() + (decay.log_decay.exp() * model.weight[0] ** 2).sum()


def outer_loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_neumann_hypergradient_agrees_with_betty():
    train, val = data(1), data(2)

    # mlo
    model, decay = models()

    class Inner(mlo.Problem):
        def training_step(self, batch):
            return inner_loss(self.module, self.outer.module, batch)

    class Outer(mlo.Problem):
        def training_step(self, batch):
            return outer_loss(self.inner.module, batch)

    solver = mlo.solvers.Neumann(iterations=ITERATIONS, alpha=ALPHA)
    inner = Inner(
        "inner",
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        data=[train],
        config=mlo.ProblemConfig(solver=solver),
    )
    outer = Outer("outer", decay, torch.optim.SGD(decay.parameters(), lr=0.1), data=[val])
    engine = mlo.Engine([outer, inner], {"outer": ["inner"]}, mlo.EngineConfig(progress=False))
    ours = engine.hypergradient("outer")["log_decay"]

    # Betty, at the same parameters and batches
    b_model, b_decay = models()

    class BInner(ImplicitProblem):
        def training_step(self, batch):
            return inner_loss(self.module, self.outer.module, batch)

    class BOuter(ImplicitProblem):
        def training_step(self, batch):
            return outer_loss(self.inner.module, batch)

    b_inner = BInner(
        "inner",
        Config(type="neumann", neumann_iterations=ITERATIONS, neumann_alpha=ALPHA),
        module=b_model,
        optimizer=torch.optim.SGD(b_model.parameters(), lr=0.1),
        train_data_loader=[train],
        device="cpu",
    )
    b_outer = BOuter(
        "outer",
        Config(first_order=True),
        module=b_decay,
        optimizer=torch.optim.SGD(b_decay.parameters(), lr=0.1),
        train_data_loader=[val],
        device="cpu",
    )
    BettyEngine(
        [b_outer, b_inner],
        config=EngineConfig(train_iters=0),
        dependencies={"l2u": {b_inner: [b_outer]}, "u2l": {b_outer: [b_inner]}},
    )
    b_inner.cur_batch = train
    loss = b_outer.training_step(val)
    b_outer.backward(
        loss,
        b_outer.trainable_parameters(),
        b_outer.paths,
        create_graph=False,
        retain_graph=True,
        allow_unused=True,
    )
    theirs = b_decay.log_decay.grad

    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-14)
    # The outer loss does not read log_decay directly: the whole gradient is implicit, and
    # it is not negligible, so the agreement says something.
    assert ours.abs().max() > 1e-4
