"""Exact nested hypergradients (``ProblemConfig(jacobian="total")``), float64, against
truths that do not use mlo: the minimal case in closed form, coupled nested quadratics
solved by hand (``nested_quadratic.py``), and finite differences of the engine's own
converged fixed point."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import mlo

from .nested_quadratic import NestedQuadraticSpec
from .quadratic import DTYPE, Vector
from .test_state_untouched import assert_identical, snapshot

# ----------------------------------------------------------------- the minimal case
#   c: f_c = ½c² − b·c                      c*(b) = b
#   b: f_b = ½b² − a·b + ½(c − 1)²          reads its lower level c
#   a: f_a = ½(c − 2)² + ½a²
# Nested: b*(a) = (a + 1)/2, so at a = 0 (b = c = ½) dF_a/da = a + (c − 2)/2 = −0.75.


class C(mlo.Problem):
    def training_step(self, batch):
        c, b = self.module.x[0], self.b.module.x[0]
        return 0.5 * c * c - b * c


class B(mlo.Problem):
    def training_step(self, batch):
        b, a, c = self.module.x[0], self.a.module.x[0], self.c.module.x[0]
        return 0.5 * b * b - a * b + 0.5 * (c - 1) ** 2


class A(mlo.Problem):
    def training_step(self, batch):
        a, c = self.module.x[0], self.c.module.x[0]
        return 0.5 * (c - 2) ** 2 + 0.5 * a * a


def minimal(solver, jacobian=None) -> mlo.Engine:
    problems = []
    for cls, name, value in ((A, "a", 0.0), (B, "b", 0.5), (C, "c", 0.5)):
        module = Vector(torch.tensor([value], dtype=DTYPE))
        config = mlo.ProblemConfig(solver=solver, jacobian=jacobian)
        problems.append(
            cls(name, module, torch.optim.SGD(module.parameters(), lr=0.1), config=config)
        )
    return mlo.Engine(problems, {"a": ["b"], "b": ["c"]}, mlo.EngineConfig(progress=False))


@pytest.mark.parametrize(
    "solver", [mlo.solvers.CG(iterations=3, tol=0.0), mlo.solvers.Neumann(iterations=60, alpha=0.3)]
)
def test_the_minimal_case_is_exact(solver):
    got = minimal(solver).hypergradient("a")["x"]
    assert abs(float(got) - (-0.75)) < 1e-12


def test_partial_keeps_the_old_answer_of_the_minimal_case():
    # ∂b*/∂a = 1 with c held fixed: −1.5, today's (and Betty's) number.
    got = minimal(mlo.solvers.CG(iterations=3, tol=0.0), "partial").hypergradient("a")["x"]
    assert abs(float(got) - (-1.5)) < 1e-12


def test_darts_on_a_nested_level_uses_the_total_mixed_product():
    # darts on b: J_ba ≈ −ξ_b ∂g_b/∂a = ξ_b (g_b = b − a + ξ_c (c − 1), c*'s darts Jacobian
    # being ξ_c); adj_b = ξ_c (c − 2): dF_a/da = a + ξ_b ξ_c (c − 2) with ξ = lr = 0.1.
    got = minimal("darts").hypergradient("a")["x"]
    assert abs(float(got) - 0.01 * (0.5 - 2)) < 1e-12


# ----------------------------------------------------------------- coupled quadratics

GRAPHS = {
    "three_level_chain": ({"a": 3, "b": 3, "c": 2}, {"a": ["b"], "b": ["c"]}),
    "four_level_chain": ({"a": 2, "b": 3, "c": 2, "d": 3}, {"a": ["b"], "b": ["c"], "c": ["d"]}),
    # a reaches c directly and through b, d through three paths; b and c both read d.
    "four_level_dag": (
        {"a": 2, "b": 3, "c": 2, "d": 2},
        {"a": ["b", "c"], "b": ["c", "d"], "c": ["d"]},
    ),
}


def nested_setup(graph: str, solver, seed: int = 0):
    dims, deps = GRAPHS[graph]
    spec = NestedQuadraticSpec(dims, deps, seed=seed)
    for name in dims:  # the nested solution is unique: every F_X is strictly convex
        if spec.graph.parents[name]:
            assert (
                torch.linalg.eigvalsh(
                    spec.total_hessian(
                        name,
                        spec.solve_lowers(
                            {n: torch.zeros(d, dtype=DTYPE) for n, d in dims.items()}
                        ),
                    ).detach()
                ).min()
                > 0.1
            )
    gen = torch.Generator().manual_seed(seed + 100)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in dims.items()}
    values = spec.solve_lowers(init)
    return spec, values, spec.build(solver, values)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_cg_gives_the_nested_hypergradient(graph):
    spec, values, engine = nested_setup(graph, mlo.solvers.CG(iterations=3, tol=0.0))
    truth = spec.total_derivative("a", values)
    assert relative_error(engine.hypergradient("a")["x"], truth) < 1e-8
    # The middle levels sit at their nested stationary points: their total derivative
    # (what the engine trains them by) is zero there.
    for middle in ("b", "c"):
        if spec.graph.children[middle]:
            assert float(engine.hypergradient(middle)["x"].norm()) < 1e-10


@pytest.mark.parametrize("graph", ["three_level_chain", "four_level_dag"])
def test_neumann_gives_the_nested_hypergradient_with_enough_terms(graph):
    solver = mlo.solvers.Neumann(iterations=130, alpha=0.4)
    spec, values, engine = nested_setup(graph, solver)
    # Neumann where its nesting is shallow, CG beneath (K^depth products otherwise).
    if "d" in spec.dims:
        engine.problems["c"].config = mlo.ProblemConfig(solver=mlo.solvers.CG(iterations=2, tol=0))
        engine.problems["d"].config = mlo.ProblemConfig(solver=mlo.solvers.CG(iterations=2, tol=0))
    truth = spec.total_derivative("a", values)
    assert relative_error(engine.hypergradient("a")["x"], truth) < 1e-6


def test_partial_differs_from_the_nested_truth_where_a_level_reads_its_lowers():
    spec, values, _ = nested_setup("three_level_chain", "cg")
    engine = spec.build(mlo.solvers.CG(iterations=3, tol=0.0), values, jacobian="partial")
    truth = spec.total_derivative("a", values)
    assert relative_error(engine.hypergradient("a")["x"], truth) > 1e-3


def test_the_total_hypergradient_equals_finite_differences_of_the_engines_own_fixed_point():
    """Train b and c with the engine to convergence (a frozen), for a and for a ± h eᵢ;
    the total hypergradient at the converged point equals the central differences of
    the converged f_a."""
    dims, deps = {"a": 2, "b": 2, "c": 2}, {"a": ["b"], "b": ["c"]}
    spec = NestedQuadraticSpec(dims, deps, seed=3)
    start = {n: torch.zeros(d, dtype=DTYPE) for n, d in dims.items()}
    start["a"] = torch.tensor([0.3, -0.7], dtype=DTYPE)
    solver = mlo.solvers.CG(iterations=2, tol=0.0)

    def converged(a: torch.Tensor) -> mlo.Engine:
        engine = spec.build(solver, {**start, "a": a}, lr={"a": 0.0, "b": 0.3, "c": 0.4})
        for _ in range(150):
            engine.step()
        return engine

    def top_objective(engine: mlo.Engine) -> float:
        values = {n: p.module.x.detach() for n, p in engine.problems.items()}
        return float(spec.objective("a", values))

    engine = converged(start["a"])
    assert float(engine.hypergradient("b")["x"].norm()) < 1e-12  # b trained to g_b = 0
    got = engine.hypergradient("a")["x"]
    h = 1e-4
    fd = torch.zeros(2, dtype=DTYPE)
    for i in range(2):
        step = torch.zeros(2, dtype=DTYPE)
        step[i] = h
        plus = top_objective(converged(start["a"] + step))
        minus = top_objective(converged(start["a"] - step))
        fd[i] = (plus - minus) / (2 * h)
    assert relative_error(got, fd) < 1e-7
    partial = spec.build(
        solver, {n: p.module.x.detach() for n, p in engine.problems.items()}, jacobian="partial"
    ).hypergradient("a")["x"]
    assert relative_error(partial, fd) > 1e-3  # the partial Jacobian is not this problem's


# ----------------------------------------------------------------- state, modes, errors


def smooth_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.2), nn.Linear(5, 1)).double()


class Lower(mlo.Problem):
    def training_step(self, batch):
        return ((self.module(batch) + 0.3 * self.middle.module(batch)) ** 2).mean()


class Middle(mlo.Problem):
    def training_step(self, batch):
        return ((self.module(batch) * self.top.module(batch) - 1) ** 2).mean() + (
            self.lower.module(batch) ** 2
        ).mean()


class Top(mlo.Problem):
    def training_step(self, batch):
        return ((self.middle.module(batch) - 0.5) ** 2).mean() + (
            self.lower.module(batch) ** 2
        ).mean()


def smooth_engine(jacobian, make=smooth_net) -> mlo.Engine:
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(6, 3, generator=gen, dtype=DTYPE) for _ in range(3)]
    config = mlo.ProblemConfig(solver=mlo.solvers.CG(iterations=3), jacobian=jacobian)
    problems = []
    for i, (cls, name) in enumerate(((Top, "top"), (Middle, "middle"), (Lower, "lower"))):
        module = make(i)
        opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
        problems.append(cls(name, module, opt, data=data, config=config))
    deps = {"top": ["middle", "lower"], "middle": ["lower"]}
    return mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))


@pytest.mark.parametrize("jacobian", ["total", "partial"])
def test_hypergradient_leaves_the_state_bit_identical_in_both_modes(jacobian):
    engine = smooth_engine(jacobian)
    for _ in range(2):
        engine.step()
    before = snapshot(engine)
    first = engine.hypergradient("top")
    assert_identical(before, snapshot(engine))
    second = engine.hypergradient("top")
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def test_describe_says_which_levels_use_which_jacobian():
    text = smooth_engine(None).describe()
    assert "middle: solver=cg" in text and "jacobian=total (it reads its lower levels)" in text
    assert "jacobian=partial (as configured)" in smooth_engine("partial").describe()


def test_total_is_refused_with_a_solver_that_cannot_give_it():
    with pytest.raises(ValueError, match="jacobian='total' is not available with the 'explicit'"):
        mlo.ProblemConfig(solver="explicit", jacobian="total")
    assert not mlo.ProblemConfig(solver="explicit").uses_total()
    assert mlo.ProblemConfig(solver="unroll").uses_total()  # it replays total gradients


def batchnorm_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 1)).double()


def test_without_third_derivatives_the_default_falls_back_to_partial_with_a_warning(caplog):
    engine = smooth_engine(None, batchnorm_net)
    with caplog.at_level(logging.WARNING, logger="mlo"):
        got = engine.hypergradient("top")
    assert "problem 'middle' reads its lower levels" in caplog.text
    assert "batch_norm" in caplog.text
    expected = smooth_engine("partial", batchnorm_net).hypergradient("top")
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert "jacobian=partial (total needs third derivatives" in engine.describe()


def test_without_third_derivatives_an_explicit_total_is_an_error():
    engine = smooth_engine("total", batchnorm_net)
    with pytest.raises(mlo.SetupError, match="problem 'middle': jacobian='total' is not avail"):
        engine.hypergradient("top")


@pytest.mark.parametrize("checkpoint", [False, True], ids=["one_graph", "checkpoint"])
def test_unroll_on_a_nested_level_differentiates_its_training_through_total_gradients(checkpoint):
    """b reads its lower level c, so the engine trains b by its total gradient
    g_b = ∂f_b/∂b + J_cbᵀ ∂f_b/∂c (J_cb = −H_c⁻¹ ∂²f_c/∂c∂b by c's cg, exact here). With
    ``unroll`` on b, a's hypergradient differentiates b's last K steps taken with g_b. The
    truth writes those K steps out by hand with dense Jacobians (c held still: its
    learning rate is 0, so the replay sees the c that training saw)."""
    dims, deps = GRAPHS["three_level_chain"]
    spec = NestedQuadraticSpec(dims, deps, seed=3)
    gen = torch.Generator().manual_seed(7)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in dims.items()}
    steps, lr_b = 3, 0.1

    class Level(mlo.Problem):
        def training_step(self, batch):
            values = {n: getattr(self, n).module.x for n in spec.dims if n != self.name}
            return spec.objective(self.name, {**values, self.name: self.module.x})

    def build(jacobian):
        modules = {n: Vector(init[n]) for n in dims}
        solver = mlo.solvers.Unroll(checkpoint=checkpoint)
        unroll = mlo.ProblemConfig(solver=solver, unroll_steps=steps, jacobian=jacobian)
        configs = {
            "a": (0.0, mlo.ProblemConfig(solver="first_order")),
            "b": (lr_b, unroll),
            "c": (0.0, mlo.ProblemConfig(solver=mlo.solvers.CG(iterations=2, tol=0.0))),
        }
        problems = [
            Level(n, modules[n], torch.optim.SGD(modules[n].parameters(), lr=lr), config=config)
            for n, (lr, config) in configs.items()
        ]
        return mlo.Engine(problems, deps, mlo.EngineConfig(progress=False)), modules

    engine, modules = build(None)
    shown = f"unroll(checkpoint={checkpoint})"
    assert f"b: solver={shown} unroll_steps=3 lowers=[c] jacobian=total" in engine.describe()
    engine.step()
    theta0 = engine.trajectories["b"].records[0].params[0].detach()
    a_now, b_now, c_now = (modules[n].x.detach() for n in "abc")

    def f(name):
        return lambda a, b, c: spec.objective(name, {"a": a, "b": b, "c": c})

    def j_cb(a, b, c):
        """∂c*/∂b = −H_c⁻¹ ∂²f_c/∂c∂b, densely."""
        hess = torch.func.hessian(f("c"), argnums=2)(a, b, c)
        mixed = torch.func.jacrev(torch.func.grad(f("c"), argnums=2), argnums=1)(a, b, c)
        return -torch.linalg.solve(hess, mixed)

    def total_gradient_b(theta, a):
        grad_b, grad_c = torch.func.grad(f("b"), argnums=(1, 2))(a, theta, c_now)
        return grad_b + j_cb(a, theta, c_now).T @ grad_c

    a = a_now.clone().requires_grad_(True)
    theta = theta0.clone().requires_grad_(True)
    for _ in range(steps):
        theta = theta - lr_b * total_gradient_b(theta, a)
    # The replayed steps are the steps training took.
    assert torch.allclose(theta.detach(), b_now, rtol=0, atol=1e-12)
    # a's total derivative: ∂f_a/∂a + (∂θ_K/∂a)ᵀ adj_b, adj_b = ∂f_a/∂b + J_cbᵀ ∂f_a/∂c.
    direct, adj_b, adj_c = torch.func.grad(f("a"), argnums=(0, 1, 2))(a_now, b_now, c_now)
    adj_b = adj_b + j_cb(a_now, b_now, c_now).T @ adj_c
    (through_b,) = torch.autograd.grad(theta, a, grad_outputs=adj_b)
    truth = direct + through_b
    ours = engine.hypergradient("a")["x"]
    assert relative_error(ours, truth) < 1e-10
    assert engine.diagnostics()["b"]["unroll_replay_error"] < 1e-12  # it replayed training
    # Replaying b's partial gradient instead (jacobian="partial", the old behaviour)
    # differentiates another procedure than the one that trained b.
    partial, _ = build("partial")
    partial.step()
    assert relative_error(partial.hypergradient("a")["x"], truth) > 1e-3
    assert partial.diagnostics()["b"]["unroll_replay_error"] > 1e-4


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_with_darts_the_nested_term_is_below_darts_own_error(graph):
    # Why darts (and sama) default to the partial Jacobian: with H⁻¹ replaced by ξI the
    # hypergradient is far from the nested truth either way, and the exact nested term
    # moves it by a small fraction of that distance (measured relative errors, ξ = D's
    # learning rate: 0.373 both ways on the 3-level chain, 1.331 on the 4-level chain,
    # 1.099 against 1.100 on the DAG).
    answers = {}
    for jacobian in ("total", "partial"):
        solver = mlo.solvers.Darts()
        spec, values, engine = nested_setup(graph, solver)
        for problem in engine.problems.values():
            problem.config = problem.config.model_copy(update={"jacobian": jacobian})
        deps = {u: list(ls) for u, ls in engine.graph.children.items() if ls}
        engine = mlo.Engine(list(engine.problems.values()), deps, engine.config)
        answers[jacobian] = engine.hypergradient("a")["x"]
    truth = spec.total_derivative("a", values)
    nested_term = float((answers["total"] - answers["partial"]).norm() / truth.norm())
    darts_error = relative_error(answers["partial"], truth)
    assert darts_error > 0.3
    assert 0 < nested_term < 0.02 * darts_error, (nested_term, darts_error)


def test_cg_past_convergence_stays_exact_in_total_mode():
    # tol=0 and 140 steps on 3-entry levels: once the residual is below rounding, further
    # steps change nothing; differentiated through them (b is nested) they gave nan.
    from .quadratic import DTYPE as F64

    names = ["l0", "l1", "l2"]
    deps = {"l0": ["l1"], "l1": ["l2"]}
    spec = NestedQuadraticSpec({n: 3 for n in names}, deps, seed=3)
    gen = torch.Generator().manual_seed(3)
    values = spec.solve_lowers({n: torch.randn(3, generator=gen, dtype=F64) for n in names})
    engine = spec.build(mlo.solvers.CG(iterations=140, tol=0.0), values, jacobian="total")
    truth = spec.total_derivative("l0", values)
    assert relative_error(engine.hypergradient("l0")["x"], truth) < 1e-12
