"""mlo.observing: evaluating modules between updates changes no training state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlo

from .test_state_untouched import assert_identical, build, snapshot


def test_observing_restores_buffers_rng_and_training_flags():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Dropout(0.5), nn.Linear(5, 2))
    model[3].eval()  # a mixed-mode module: each flag must come back as it was
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    with mlo.observing([model]):
        model(torch.randn(4, 3))  # training-mode BN and dropout: moves buffers, draws RNG
        model.eval()
        assert not torch.is_grad_enabled()
    assert_identical(buffers, dict(model.named_buffers()))
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(rng, torch.get_rng_state())


def test_observing_restores_state_when_the_block_raises():
    model = nn.BatchNorm1d(3)
    before = model.running_mean.clone()
    with pytest.raises(RuntimeError, match="inside"), mlo.observing([model]):
        model(torch.randn(4, 3) + 5)
        raise RuntimeError("inside")
    assert torch.equal(model.running_mean, before)


def test_reports_and_losses_called_repeatedly_leave_the_engine_bit_identical():
    engine = build("cg")
    for _ in range(2):
        engine.step()
    before = snapshot(engine)
    for _ in range(3):
        engine.report()
        engine.losses()
        with engine.observing():
            for problem in engine.problems.values():
                problem.module(torch.randn(8, 3))
    assert_identical(before, snapshot(engine))
