"""Reverse-mode products from a graph built for each one (``ProblemConfig(hvp="recompute")``,
issue 32): what only they do. Their values, hypergradients, dropout masks, held
parameters and memory are tested beside forward mode's, against the retained graph's
(``tests/mlo/test_forward_products.py``); here, a constant objective and an operation
without a forward-mode rule (whose mixed products fall back to reverse mode)."""

from __future__ import annotations

import gc
import weakref

import torch

from mlo.autodiff import SecondOrder, recompute
from mlo.autodiff.recompute import RecomputedSecondOrder, _handed_out_once

from .test_forward_products import (
    DTYPE,
    NoForwardRule,
    two_levels,
)


def test_a_product_of_a_constant_objective_is_zero():
    w = torch.ones(3, dtype=DTYPE, requires_grad=True)
    other = torch.ones(2, dtype=DTYPE, requires_grad=True)
    flat = RecomputedSecondOrder(lambda values: torch.tensor(1.0, dtype=DTYPE), [w])
    linear = RecomputedSecondOrder(lambda values: (values[0] * 2.0).sum() + other.sum(), [w])
    v = [torch.ones(3, dtype=DTYPE)]
    for products in (flat, linear):  # no graph at all; a gradient that is a constant
        assert torch.equal(products.hvp(v)[0], torch.zeros(3, dtype=DTYPE))
        assert torch.equal(products.mixed(v, [other])[0], torch.zeros(2, dtype=DTYPE))


def test_it_needs_no_forward_mode_rule():
    engine, truth = two_levels("cg", "recompute"), two_levels("cg", "reverse")
    for e in (engine, truth):
        fit = e.problems["fit"]
        step = type(fit).training_step
        type(fit).training_step = lambda self, batch, step=step: NoForwardRule.apply(
            step(self, batch)
        )
    assert "hvp=recompute mixed=forward-over-reverse" in engine.describe()
    a, b = engine.hypergradient("penalty")["lam"], truth.hypergradient("penalty")["lam"]
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-15) and float(b.abs()) > 1e-6
    # the mixed product's forward-mode attempt failed, so it was taken in reverse mode,
    # which the level keeps: forward mode is not tried again
    assert "mixed=reverse (forward mode failed:" in engine.describe()
    tried = []
    forward_product = recompute.forward_product
    recompute.forward_product = lambda *args, **kwargs: (
        tried.append(1) or forward_product(*args, **kwargs)
    )
    try:
        again = engine.hypergradient("penalty")["lam"]
    finally:
        recompute.forward_product = forward_product
    assert not tried and torch.equal(again, a)


def test_a_saved_output_that_no_product_reaches_is_freed():
    """exp saves its own output; holding that output (with its history) in the hook's
    holder would make the node hold itself, so a node the double backward never reaches
    would never be freed."""
    x = torch.ones(4, dtype=DTYPE, requires_grad=True)
    with _handed_out_once():
        y = x.exp()
    gone = weakref.ref(y)
    del y
    gc.collect()
    assert gone() is None
    with _handed_out_once():  # and what it saves still differentiates right
        z = (x.exp() * x.exp()).sum()
    (g,) = torch.autograd.grad(z, x)
    assert torch.allclose(g, 2 * x.detach().exp() ** 2, rtol=1e-15, atol=0)


def test_an_objective_that_disables_saved_tensor_hooks_gets_reverse_mode_mixed_products():
    """Forward mode holds what autograd saves through saved-tensor hooks, which such an
    objective refuses; recompute's mixed product then falls back to reverse mode (and its
    Hessian-vector products, which hook only the backward pass, are unaffected)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, generator=gen, dtype=DTYPE, requires_grad=True)
    a = torch.randn(4, generator=gen, dtype=DTYPE, requires_grad=True)

    def objective(values):
        with torch.autograd.graph.disable_saved_tensors_hooks("this model refuses hooks"):
            return ((values[0].exp() * a).sin() * values[0]).sum()

    v = [torch.randn(4, generator=gen, dtype=DTYPE)]
    products = RecomputedSecondOrder(objective, [w], forward_objective=objective)
    truth = SecondOrder(objective([w]), [w])
    assert torch.allclose(products.hvp(v)[0], truth.hvp(v)[0], rtol=1e-12, atol=1e-14)
    (mixed,) = products.mixed(v, [a])
    assert torch.allclose(mixed, truth.mixed(v, [a])[0], rtol=1e-12, atol=1e-14)
    assert float(mixed.abs().max()) > 1e-3
    assert "this model refuses hooks" in products.memo[recompute.REVERSE_MIXED]
