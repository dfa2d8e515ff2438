"""The ``lease-author`` preset (the authors' public code): one sign-PGD step in normalised
units, the explainer trained on adversarial inputs, the audience never trained and so
contributing nothing to the architecture's hypergradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import mlo
from problems.lease import LeaseHyper, LeaseRun

from .test_hypergradient import ExplanationConfig, data, tiny_lease


def author_engine() -> mlo.Engine:
    return tiny_lease(ExplanationConfig(), solvers="darts", author=True)


def test_preset_is_one_sign_step_in_normalised_units_without_random_start():
    explanation = LeaseHyper().author().explanation
    assert explanation.steps == 1 and not explanation.differentiable
    assert not explanation.random_start and explanation.units == "normalized"
    assert explanation.step_size == explanation.epsilon == 8 / 255
    run = LeaseRun(lease=LeaseHyper(author_setting=True)).effective()
    assert run.lease.explanation == explanation


def test_explainer_trains_on_one_fgsm_step_of_its_own_batch():
    engine = author_engine()
    assert set(engine.problems) == {"relearn", "explainer"}
    explainer, relearn = engine.problems["explainer"], engine.problems["relearn"]
    x, y = data(3, 1)[0]
    weights = relearn.module.normalized()
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(explainer.module(inputs, weights), y), inputs)
    eps = 8 / 255  # normalised units: not divided by the pixel std of 0.25
    adversarial = x + (eps * grad.sign()).clamp(-eps, eps)
    expected = F.cross_entropy(explainer.module(adversarial, weights), y)
    assert torch.equal(explainer.training_step((x, y)), expected)


def test_the_untrained_audience_contributes_nothing_to_the_architecture():
    engine = author_engine()
    engine.step()
    relearn = engine.problems["relearn"]
    before = engine.hypergradient("relearn")
    audience = relearn.fixed_audience
    assert not any(p.requires_grad for p in audience.parameters()) and not audience.training
    with torch.no_grad():
        for p in audience.parameters():
            p.add_(torch.randn_like(p))
    # Its loss (a constant in A) changes; A's hypergradient does not.
    after = engine.hypergradient("relearn")
    for name, value in before.items():
        assert torch.allclose(value, after[name], rtol=1e-12, atol=1e-15), name
    relearn.lam = 0.0
    assert all(float(g.abs().max()) == 0.0 for g in engine.hypergradient("relearn").values())
