"""Second-order products by central differences of gradients
(``ProblemConfig(hvp="finite_difference")``) against the exact reverse-over-reverse ones,
in float64: the error falls as r² (truncation) down to rounding; both evaluations draw
the same random numbers and leave the random state as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlo.autodiff import SecondOrder
from mlo.autodiff.finite_difference import FiniteDifferenceSecondOrder
from mlo.parameters import ParameterSet

from .test_forward_products import mlp, two_levels

DTYPE = torch.float64


def relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    diff = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    return diff / sum(float(y.pow(2).sum()) for y in b) ** 0.5


def setup(dropout: float = 0.0):
    net, x, y = mlp()
    if dropout:
        net = nn.Sequential(net[0], net[1], nn.Dropout(dropout), net[2])
    scale = torch.tensor(0.7, dtype=DTYPE, requires_grad=True)  # another level's parameter
    params = ParameterSet(net)

    def objective(values=None):
        if values is None:
            return scale * ((net(x).squeeze(1) - y) ** 2).mean()
        with params.substitute(values):
            return scale * ((net(x).squeeze(1) - y) ** 2).mean()

    gen = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=gen, dtype=DTYPE) for p in params.tensors]
    return objective, params.tensors, scale, v


def test_the_error_falls_as_the_radius_squared_down_to_rounding():
    objective, params, scale, v = setup()
    exact = SecondOrder(objective(), params)
    hv, (mixed,) = exact.hvp(v), exact.mixed(v, [scale])
    errors = {}
    for radius in (1e-2, 1e-3, 1e-5):
        approx = FiniteDifferenceSecondOrder(objective, params, radius)
        errors[radius] = relative(approx.hvp(v), hv)
        assert relative(approx.mixed(v, [scale]), [mixed]) < 2 * errors[radius] + 1e-9
    assert 30 < errors[1e-2] / errors[1e-3] < 300  # O(r²): a factor 100 per decade
    assert errors[1e-2] < 1e-3
    assert errors[1e-5] < 1e-8


def test_both_evaluations_see_the_same_dropout_mask_and_the_random_state_is_kept():
    objective, params, _scale, v = setup(dropout=0.5)
    torch.manual_seed(3)
    exact = SecondOrder(objective(), params)  # one mask, drawn from seed 3
    hv = exact.hvp(v)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    approx = FiniteDifferenceSecondOrder(objective, params, 1e-5).hvp(v)
    assert torch.equal(torch.get_rng_state(), before)
    assert relative(approx, hv) < 1e-8
    # Without the shared state the two gradients see two masks: nothing like H v.
    torch.manual_seed(3)
    eps = 1e-5 / sum(float(t.pow(2).sum()) for t in v) ** 0.5
    grads = []
    for sign in (1.0, -1.0):
        points = [(p.detach() + sign * eps * t).requires_grad_() for p, t in zip(params, v)]
        grads.append(torch.autograd.grad(objective(points), points))
    naive = [(a - b) / (2 * eps) for a, b in zip(*grads)]
    assert relative(naive, hv) > 1.0


def test_a_zero_vector_gives_a_zero_product():
    objective, params, _scale, v = setup()
    zeros = [torch.zeros_like(t) for t in v]
    product = FiniteDifferenceSecondOrder(objective, params).hvp(zeros)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in product)


@pytest.mark.parametrize("solver", ["cg", "neumann"])
def test_the_hypergradient_is_close_to_the_exact_one_through_cg_and_neumann(solver):
    reverse, approx = two_levels(solver, "reverse"), two_levels(solver, "finite_difference")
    fit = approx.problems["fit"]
    fit.config = fit.config.model_copy(update={"hvp_radius": 1e-5})
    for _ in range(3):
        reverse.step()
    approx.load_state_dict(reverse.state_dict())  # the same state, trained a little
    a, b = approx.hypergradient("penalty")["lam"], reverse.hypergradient("penalty")["lam"]
    assert float((a - b).abs() / b.abs()) < 1e-7
    assert float(b.abs()) > 1e-6
    assert "hvp=finite_difference(r=1e-05)" in approx.describe()
