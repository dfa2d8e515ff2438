"""Hypergradients against closed forms on nested quadratics, float64, lowers at their
exact best responses, at 2, 3 and 4 levels and on a 4-level DAG."""

from __future__ import annotations

import pytest
import torch

import mlo

from .quadratic import DTYPE, QuadraticSpec

GRAPHS = {
    "two_levels": ({"a": 4, "b": 5}, {"a": ["b"]}),
    "three_level_chain": ({"a": 3, "b": 4, "c": 5}, {"a": ["b"], "b": ["c"]}),
    "four_level_chain": ({"a": 3, "b": 4, "c": 3, "d": 5}, {"a": ["b"], "b": ["c"], "c": ["d"]}),
    # c has two parents (a, b); a reaches c by a → c and a → b → c, and d by three paths.
    "four_level_dag": (
        {"a": 3, "b": 4, "c": 2, "d": 3},
        {"a": ["b", "c"], "b": ["c", "d"], "c": ["d"]},
    ),
}

LR = 0.1


def setup(graph: str, solver, seed: int = 0):
    dims, deps = GRAPHS[graph]
    spec = QuadraticSpec(dims, deps, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in dims.items()}
    values = spec.solve_lowers(init)
    return spec, values, spec.build(solver, values, lr=LR)


def uppers(spec: QuadraticSpec) -> list[str]:
    return [n for n in spec.graph.order if spec.graph.children[n]]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_cg_matches_closed_form(graph):
    spec, values, engine = setup(graph, mlo.solvers.CG(iterations=10, tol=0.0))
    for top in uppers(spec):
        got = engine.hypergradient(top)["x"]
        truth = spec.total_derivative(top, values)
        assert relative_error(got, truth) < 1e-8, top


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_neumann_matches_closed_form_with_enough_terms(graph):
    spec, values, engine = setup(graph, mlo.solvers.Neumann(iterations=150, alpha=0.3))
    for top in uppers(spec):
        got = engine.hypergradient(top)["x"]
        truth = spec.total_derivative(top, values)
        assert relative_error(got, truth) < 1e-6, top


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_neumann_equals_its_truncated_series(graph):
    k, alpha = 3, 0.3

    def truncated(n, m):
        term, total = m, m
        for _ in range(k):
            term = term - alpha * spec.A[n] @ term
            total = total + term
        return alpha * total

    spec, values, engine = setup(graph, mlo.solvers.Neumann(iterations=k, alpha=alpha))
    for top in uppers(spec):
        got = engine.hypergradient(top)["x"]
        truth = spec.total_derivative(top, values, inverse=truncated)
        assert relative_error(got, truth) < 1e-12, top


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("xi", [None, 0.05])
def test_darts_equals_minus_xi_times_mixed_derivative(graph, xi):
    spec, values, engine = setup(graph, mlo.solvers.Darts(epsilon=0.01, xi=xi))
    scale = LR if xi is None else xi
    for top in uppers(spec):
        got = engine.hypergradient(top)["x"]
        truth = spec.total_derivative(top, values, inverse=lambda n, m: scale * m)
        # Central differences are exact for quadratics up to rounding of the r·v shift.
        assert relative_error(got, truth) < 1e-9, top


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_first_order_equals_direct_gradient(graph):
    spec, values, engine = setup(graph, "first_order")
    for top in uppers(spec):
        got = engine.hypergradient(top)["x"]
        live = {n: v.clone().requires_grad_(n == top) for n, v in values.items()}
        direct = torch.autograd.grad(spec.objective(top, live), live[top])[0]
        assert torch.allclose(got, direct, rtol=0, atol=1e-14), top


def test_solvers_can_differ_per_level():
    """CG on one level and Neumann on another compose through the adjoint."""
    spec, values, engine = setup("four_level_chain", "cg")
    partial = {"jacobian": "partial"}  # this spec's semantics (see quadratic.py)
    engine.problems["b"].config = mlo.ProblemConfig(
        solver=mlo.solvers.CG(iterations=10, tol=0), **partial
    )
    engine.problems["c"].config = mlo.ProblemConfig(
        solver=mlo.solvers.Neumann(iterations=200, alpha=0.3), **partial
    )
    engine.problems["d"].config = mlo.ProblemConfig(
        solver=mlo.solvers.CG(iterations=10, tol=0), **partial
    )
    got = engine.hypergradient("a")["x"]
    assert relative_error(got, spec.total_derivative("a", values)) < 1e-8


def test_darts_finite_difference_on_a_non_quadratic_lower_level():
    """Away from quadratics DARTS is a central difference: O(r²) from the exact mixed product."""
    torch.manual_seed(0)
    u = torch.nn.Linear(3, 1, dtype=DTYPE)
    w = torch.nn.Linear(3, 1, dtype=DTYPE)
    x = torch.randn(8, 3, dtype=DTYPE)

    class Inner(mlo.Problem):
        def training_step(self, batch):
            return (torch.tanh(self.module(x) * self.outer.module(x)) ** 2).mean()

    class Outer(mlo.Problem):
        def training_step(self, batch):
            return (self.inner.module(x) ** 2).mean() + (self.module.weight**2).sum()

    inner = Inner(
        "inner",
        w,
        torch.optim.SGD(w.parameters(), lr=0.1),
        config=mlo.ProblemConfig(solver=mlo.solvers.Darts(epsilon=1e-4)),
    )
    outer = Outer("outer", u, torch.optim.SGD(u.parameters(), lr=0.1))
    engine = mlo.Engine([outer, inner], {"outer": ["inner"]}, mlo.EngineConfig(progress=False))
    got = engine.hypergradient("outer")

    w_params = list(w.parameters())
    u_params = list(u.parameters())
    f_outer = outer.training_step(None)
    direct = torch.autograd.grad(f_outer, u_params, retain_graph=True, allow_unused=True)
    v = torch.autograd.grad(f_outer, w_params)
    g = torch.autograd.grad(inner.training_step(None), w_params, create_graph=True)
    mixed = torch.autograd.grad(g, u_params, grad_outputs=v)
    for (name, value), d, m in zip(got.items(), direct, mixed):
        expected = (0 if d is None else d) - 0.1 * m
        assert torch.allclose(value, expected, rtol=1e-6, atol=1e-9), name
