"""LeaSE's four-level hypergradient for the architecture, against explicit autograd.

A tiny instance in float64: a 3-cell supernet with 4 channels, the tiny audience ResNet,
8×8 images, 2-step PGD; ``unroll`` with K = 1 on the explainer and the audience, the
``explicit`` solver on the explain level.

The reference writes the same computation out by hand: one SGD step of the explainer
from its recorded state as a function of A, the explanation of the audience's current
batch as a function of (A, W), one SGD step of the audience as a function of the
explanation, and relearn's objective. The engine computes the total derivative at the
current state, so each level's value in the reference is pinned to its current value
(``value + (f − f.detach())``): the derivatives flow through the written-out steps, the
values are those the engine holds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import mlo
from problems.lease import AudienceHyper, ExplanationConfig, LeaseHyper, build
from problems.lease.explanations import explanation_mask, random_start
from problems.nas import ArchitectureWeights, SearchHyper, Supernet
from problems.nas.search_space import CellWeights

from ...reference import pinned, sgd_step

B, SIZE = 4, 8


def data(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(B, 3, SIZE, SIZE, generator=gen, dtype=torch.float64),
            torch.randint(0, 10, (B,), generator=gen),
        )
        for _ in range(n)
    ]


def tiny_lease(explanation: ExplanationConfig, solvers: str = "unroll", author: bool = False):
    """The tiny float64 instance; ``author`` applies the ``lease-author`` preset (two
    levels, the audience attached to relearn untrained)."""
    torch.manual_seed(0)
    supernet = Supernet(10, layers=3, init_channels=4).double()
    arch = ArchitectureWeights(init_scale=0.5).double()
    hyper = LeaseHyper(
        explanation=explanation,
        explainer_solver=solvers,
        audience_solver=solvers,
        audience=AudienceHyper(arch="resnet_tiny"),
    )
    hyper = hyper.author() if author else hyper
    search = SearchHyper(grad_clip=1e9)  # no clipping in effect
    problems, deps = build(
        supernet,
        arch,
        data(3, 1),
        data(3, 2),
        data(3, 3),
        num_classes=10,
        batch_size=B,
        total_updates=100,
        image_shape=(3, SIZE, SIZE),
        pixel_std=torch.full((3,), 0.25, dtype=torch.float64),
        hyper=hyper,
        search=search,
        seed=5,
    )
    if author:
        problems[0].fixed_audience.double()
    else:
        problems[2].module.double()  # explanations
        problems[3].module.double()  # audience
    return mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))


def reference_hypergradient(engine: mlo.Engine) -> list[torch.Tensor]:
    relearn, explainer, explain, audience = (
        engine.problems[n] for n in ("relearn", "explainer", "explain", "audience")
    )
    supernet, audience_net = explainer.module, audience.module
    w_names = explainer.params.names
    v_names = audience.params.names
    a_normal, a_reduce = (
        p.detach().clone().requires_grad_(True) for p in relearn.module.parameters()
    )

    def weights():
        return CellWeights(F.softmax(a_normal, -1), F.softmax(a_reduce, -1))

    def supernet_fn(w, x):
        return functional_call(supernet, dict(zip(w_names, w)), (x, weights()))

    # explainer: one step from its recorded state, as a function of A
    record = engine.trajectories["explainer"].records[-1]
    w0 = [p.clone().requires_grad_(True) for p in record.params]
    x, y = record.batch
    g = torch.autograd.grad(F.cross_entropy(supernet_fn(w0, x), y), w0, create_graph=True)
    w = pinned(explainer.params.tensors, sgd_step(w0, g, record))

    # explain: the explanation of the audience's current batch, as a function of (A, W)
    x_e, y_e = explain.batch
    gen = torch.Generator().manual_seed(explain.seed * 1_000_003 + explain.stream.position)
    start = random_start(
        x_e.shape, explain.explanation, explain.pixel_std, gen, x_e.device, x_e.dtype
    )
    mask = explanation_mask(
        lambda inputs: supernet_fn(w, inputs),
        x_e,
        y_e,
        start,
        explain.explanation,
        explain.pixel_std,
    )
    (mask,) = pinned(explain.params.tensors, [mask])

    # audience: one step from its recorded state on the current shared batch, f(E)
    record = engine.trajectories["audience"].records[-1]
    v0 = [p.clone().requires_grad_(True) for p in record.params]

    def audience_fn(v, inputs):
        return functional_call(audience_net, dict(zip(v_names, v)), (inputs,))

    loss = F.cross_entropy(audience_fn(v0, x_e), y_e) + audience.gamma * F.cross_entropy(
        audience_fn(v0, x_e * mask), y_e
    )
    g = torch.autograd.grad(loss, v0, create_graph=True)
    v = pinned(audience.params.tensors, sgd_step(v0, g, record))

    # relearn
    x_v, y_v = relearn.batch
    f = F.cross_entropy(audience_fn(v, x_v), y_v) + relearn.lam * F.cross_entropy(
        supernet_fn(w, x_v), y_v
    )
    return list(torch.autograd.grad(f, [a_normal, a_reduce]))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "saliency"])
def test_four_level_hypergradient_equals_explicit_autograd(method):
    engine = tiny_lease(ExplanationConfig(method=method, steps=2))
    for _ in range(2):
        engine.step()
    got = engine.hypergradient("relearn")
    truth = reference_hypergradient(engine)
    for (name, value), expected in zip(got.items(), truth):
        error = float((value - expected).norm() / expected.norm())
        assert error < 1e-10, (name, error)


@pytest.mark.slow
def test_audience_term_changes_the_architecture_hypergradient():
    """With the default differentiable explanations, the audience reaches A; with the
    paper's sign-PGD it cannot, and removing it changes nothing."""

    def hypergradient(explanation, with_audience: bool):
        engine = tiny_lease(explanation, solvers="darts")
        engine.step()
        if not with_audience:
            relearn = engine.problems["relearn"]

            def explainer_only(batch):
                x, y = relearn.images(batch)
                logits = relearn.explainer.module(x, relearn.module.normalized())
                return relearn.lam * F.cross_entropy(logits, y)

            relearn.training_step = explainer_only
        return torch.cat([g.flatten() for g in engine.hypergradient("relearn").values()])

    default = ExplanationConfig(steps=2)
    full, alone = hypergradient(default, True), hypergradient(default, False)
    assert float((full - alone).norm() / alone.norm()) > 1e-3

    sign = ExplanationConfig(steps=2, differentiable=False)
    full, alone = hypergradient(sign, True), hypergradient(sign, False)
    assert torch.allclose(full, alone, rtol=1e-10, atol=1e-14)
