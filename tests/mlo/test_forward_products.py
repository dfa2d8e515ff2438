"""Forward-over-reverse second-order products (``ProblemConfig(hvp="forward")``, issue 32)
against the reverse-over-reverse ones they replace, in float64: the same Hessian-vector
and mixed products, the same hypergradients through cg and neumann, and a clear error
where an operation has no forward-mode rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlo
from mlo.autodiff import SecondOrder
from mlo.autodiff.forward import ForwardSecondOrder
from mlo.parameters import ParameterSet

DTYPE = torch.float64


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 1)).to(DTYPE)
    return net, torch.randn(20, 6, dtype=DTYPE), torch.randn(20, dtype=DTYPE)


def test_products_equal_the_reverse_ones():
    net, x, y = mlp()
    scale = torch.tensor(0.7, dtype=DTYPE, requires_grad=True)  # another level's parameter
    params = ParameterSet(net)

    def objective(values=None):
        context = params.substitute(values) if values is not None else None
        if context is None:
            return scale * ((net(x).squeeze(1) - y) ** 2).mean()
        with context:
            return scale * ((net(x).squeeze(1) - y) ** 2).mean()

    gen = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=gen, dtype=DTYPE) for p in params.tensors]
    reverse = SecondOrder(objective(), params.tensors)
    forward = ForwardSecondOrder(objective, params.tensors)
    for a, b in zip(forward.hvp(v), reverse.hvp(v)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    (mixed_f,) = forward.mixed(v, [scale])
    (mixed_r,) = reverse.mixed(v, [scale])
    assert torch.allclose(mixed_f, mixed_r, rtol=1e-12, atol=1e-14)
    assert float(mixed_r.abs()) > 1e-6


def two_levels(solver: str, hvp: str) -> mlo.Engine:
    net, x, y = mlp()

    class Fit(mlo.Problem):
        def training_step(self, batch):
            penalty = self.penalty.module.lam.exp() * sum(
                p.pow(2).sum() for p in self.module.parameters()
            )
            return ((self.module(x[:12]).squeeze(1) - y[:12]) ** 2).mean() + penalty

    class Penalty(mlo.Problem):
        def training_step(self, batch):
            return ((self.fit.module(x[12:]).squeeze(1) - y[12:]) ** 2).mean()

    lam = nn.ParameterDict({"lam": nn.Parameter(torch.tensor(-1.0, dtype=DTYPE))})
    config = mlo.ProblemConfig(solver=solver, hvp=hvp)
    fit = Fit("fit", net, torch.optim.SGD(net.parameters(), lr=0.05), config=config)
    penalty = Penalty("penalty", lam, torch.optim.SGD(lam.parameters(), lr=0.1))
    return mlo.Engine([penalty, fit], {"penalty": ["fit"]}, mlo.EngineConfig(progress=False))


@pytest.mark.parametrize("solver", ["cg", "neumann"])
def test_the_hypergradient_is_the_same_through_cg_and_neumann(solver):
    reverse, forward = two_levels(solver, "reverse"), two_levels(solver, "forward")
    for _ in range(3):
        reverse.step()
    forward.load_state_dict(reverse.state_dict())  # the same state, trained a little
    a, b = forward.hypergradient("penalty")["lam"], reverse.hypergradient("penalty")["lam"]
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    assert float(b.abs()) > 1e-6
    assert "hvp=forward" in forward.describe() and "hvp=forward" not in reverse.describe()


class NoForwardRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_an_operation_without_a_forward_rule_names_the_level_and_the_fix():
    engine = two_levels("cg", "forward")
    fit = engine.problems["fit"]
    step = type(fit).training_step
    type(fit).training_step = lambda self, batch: NoForwardRule.apply(step(self, batch))
    with pytest.raises(mlo.SetupError, match=r"level 'fit'.*hvp='reverse'"):
        engine.hypergradient("penalty")
