"""The ``sama`` solver against its closed form on a quadratic, in float64.

Lower level ``f(y; x) = ½ yᵀAy − yᵀBx`` (its mixed derivative is ``−B``, so the central
finite difference along any direction is exact up to rounding), upper level
``F(x, y) = ½‖y − t‖² + ½ρ‖x‖²``. With identity base Jacobian and Adam's map,
``dF/dx = ρx + ξ Bᵀ (∂F/∂y) / (√v̂ + ε)``, ``v̂`` the lower level's bias-corrected second
moment; with SGD the map is the identity and ``sama`` is ``darts``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlo

DIM_X, DIM_Y, RHO, LR = 3, 4, 0.1, 0.05
gen = torch.Generator().manual_seed(0)
M = torch.randn(DIM_Y, DIM_Y, generator=gen, dtype=torch.float64)
A = M @ M.T + DIM_Y * torch.eye(DIM_Y, dtype=torch.float64)
B = torch.randn(DIM_Y, DIM_X, generator=gen, dtype=torch.float64)
T = torch.randn(DIM_Y, generator=gen, dtype=torch.float64)


class Vec(nn.Module):
    def __init__(self, n: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.v = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))


class Lower(mlo.Problem):
    def training_step(self, batch):
        y, x = self.module.v, self.upper.module.v
        return 0.5 * y @ A @ y - y @ B @ x


class Upper(mlo.Problem):
    def training_step(self, batch):
        y, x = self.lower.module.v, self.module.v
        return 0.5 * (y - T) @ (y - T) + 0.5 * RHO * x @ x


def engine(solver, optimizer) -> tuple[mlo.Engine, nn.Module, nn.Module]:
    x, y = Vec(DIM_X, 1), Vec(DIM_Y, 2)
    lower = Lower(
        "lower", y, optimizer(y.parameters(), lr=LR), config=mlo.ProblemConfig(solver=solver)
    )
    upper = Upper("upper", x, torch.optim.SGD(x.parameters(), lr=0.1))
    built = mlo.Engine([upper, lower], {"upper": ["lower"]}, mlo.EngineConfig(progress=False))
    return built, x, y


def test_with_adam_it_is_the_closed_form_with_adams_preconditioner():
    built, x, y = engine("sama", torch.optim.Adam)
    for _ in range(3):
        built.step()
    state = built.problems["lower"].optimizer.state[y.v]
    group = built.problems["lower"].optimizer.param_groups[0]
    corrected = state["exp_avg_sq"] / (1 - group["betas"][1] ** float(state["step"]))
    u = (y.v.detach() - T) / (corrected.sqrt() + group["eps"])
    truth = RHO * x.v.detach() + LR * B.T @ u
    got = built.hypergradient("upper")["v"]
    assert torch.allclose(got, truth, rtol=0, atol=1e-10), (got - truth).abs().max()
    # and it is not darts's answer: the preconditioner matters here
    plain = RHO * x.v.detach() + LR * B.T @ (y.v.detach() - T)
    assert (got - plain).abs().max() > 1e-3


def test_with_sgd_it_is_darts():
    results = {}
    for solver in ("sama", "darts"):
        built, _, _ = engine(solver, torch.optim.SGD)
        for _ in range(3):
            built.step()
        results[solver] = built.hypergradient("upper")["v"]
    assert torch.equal(results["sama"], results["darts"])


def test_an_optimizer_whose_map_it_does_not_read_is_refused_by_name():
    built, _, _ = engine("sama", torch.optim.RMSprop)
    with pytest.raises(mlo.SetupError, match=r"its optimizer is RMSprop.*use 'darts'"):
        built.step()


def test_it_is_registered_by_name_and_takes_gradients_only():
    config = mlo.ProblemConfig(solver="sama")
    assert isinstance(config.solver, mlo.solvers.Sama)
    assert config.solver.products(1) == 2  # two gradients, no second-order pass
