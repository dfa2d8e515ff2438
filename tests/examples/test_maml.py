"""MAML and iMAML on the engine: a few meta steps move θ; MAML's gradient is the
second-order MAML gradient written out by hand."""

from __future__ import annotations

import pytest
import torch

import mlo
from problems.meta import adapt_and_score, build, functional_mlp, sample_tasks
from problems.meta.levels import task_mse


@pytest.mark.parametrize("method", ["maml", "imaml"])
def test_a_few_meta_steps_move_theta_and_stay_finite(method):
    problems, deps = build(
        method=method, meta_batch=4, shots=5, inner_steps=2, inner_lr=0.01, meta_lr=1e-2, seed=0
    )
    engine = mlo.Engine(problems, deps, mlo.EngineConfig(steps=3, progress=False))
    before = [p.detach().clone() for p in engine.problems["meta"].module.parameters()]
    engine.run()
    after = list(engine.problems["meta"].module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(torch.isfinite(p).all() for p in after)
    mse = adapt_and_score(after, sample_tasks(3, 5, 20, torch.Generator().manual_seed(1)), 2, 0.01)
    assert mse.shape == (3,) and torch.isfinite(mse).all()


def test_maml_hypergradient_equals_second_order_maml():
    torch.set_default_dtype(torch.float64)
    try:
        problems, deps = build(
            method="maml", meta_batch=3, shots=5, inner_steps=2, inner_lr=0.05, meta_lr=0.0, seed=0
        )
        engine = mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))
        engine.step()  # adapt takes its 2 steps from Δ = 0 on this task batch
        got = engine.hypergradient("meta")
        xs, ys, xq, yq = engine.problems["adapt"].batch
        theta = [
            p.detach().clone().requires_grad_(True) for p in engine.problems["meta"].module.weights
        ]
        phi = [t.unsqueeze(0).expand(3, *t.shape) for t in theta]
        for _ in range(2):
            grads = torch.autograd.grad(
                task_mse(functional_mlp(xs, phi), ys).sum(), phi, create_graph=True
            )
            phi = [p - 0.05 * g for p, g in zip(phi, grads)]
        truth = torch.autograd.grad(task_mse(functional_mlp(xq, phi), yq).mean(), theta)
        for value, expected in zip(got.values(), truth):
            assert torch.allclose(value, expected, rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)
