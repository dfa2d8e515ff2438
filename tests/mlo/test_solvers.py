"""Solver registry, diagnostics and warnings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import pytest
import torch

import mlo
from mlo.autodiff.linalg import Vector

from .quadratic import DTYPE, QuadraticSpec


@mlo.solvers.register("scaled_identity")
class ScaledIdentity(mlo.solvers.ImplicitSolver):
    """A user's solver: ``H⁻¹ ≈ c·I``, defined outside mlo/."""

    c: float = 0.5

    def inverse_hvp(self, hessian, v: Vector, level):
        return [self.c * t for t in v], {}


class Doubling(mlo.solvers.Solver):
    """A solver that is not an implicit one: twice the exact CG answer."""

    def vjp(self, level, v, parents: Sequence[Sequence[torch.Tensor]]):
        exact = mlo.solvers.CG(iterations=20, tol=0).vjp(level, v, parents)
        return mlo.solvers.SolverResult([[2 * t for t in g] for g in exact.vjps])


mlo.solvers.register("doubling")(Doubling)


def quadratic(solver, dims=None, deps=None):
    spec = QuadraticSpec(dims or {"a": 3, "b": 4, "c": 2}, deps or {"a": ["b"], "b": ["c"]})
    gen = torch.Generator().manual_seed(5)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in spec.dims.items()}
    values = spec.solve_lowers(init)
    return spec, values, spec.build(solver, values)


def test_registered_custom_solver_is_used_by_name():
    assert "scaled_identity" in mlo.solvers.available()
    config = mlo.ProblemConfig(solver="scaled_identity")
    assert isinstance(config.solver, ScaledIdentity)
    spec, values, engine = quadratic("scaled_identity")
    got = engine.hypergradient("a")["x"]
    truth = spec.total_derivative("a", values, inverse=lambda n, m: 0.5 * m)
    assert torch.allclose(got, truth, rtol=1e-12, atol=1e-14)


def test_custom_solver_with_its_own_vjp():
    spec, values, engine = quadratic("doubling", {"a": 3, "b": 4}, {"a": ["b"]})
    got = engine.hypergradient("a")["x"]
    exact = spec.total_derivative("a", values)
    direct = spec.total_derivative("a", values, inverse=lambda n, m: 0 * m)
    assert torch.allclose(got - direct, 2 * (exact - direct), rtol=1e-10, atol=1e-12)


def test_registering_a_taken_name_or_a_non_solver_fails():
    with pytest.raises(ValueError, match="already registered"):
        mlo.solvers.register("cg")(ScaledIdentity)
    with pytest.raises(TypeError, match=r"subclass of mlo\.solvers\.Solver"):
        mlo.solvers.register("nope")(object)


def test_cg_reports_residual_and_stops_early_without_changing_the_answer():
    _, _values, engine = quadratic(mlo.solvers.CG(iterations=50, tol=1e-12))
    got = engine.hypergradient("a")["x"]
    diag = engine.diagnostics()
    assert diag["b"]["cg_residual"] < 1e-12 and diag["c"]["cg_residual"] < 1e-12
    assert diag["b"]["cg_negative_curvature"] == 0.0
    _, _, exact_engine = quadratic(mlo.solvers.CG(iterations=4, tol=0))
    assert torch.allclose(got, exact_engine.hypergradient("a")["x"], rtol=1e-10)


def test_cg_residual_is_large_when_iterations_are_too_few():
    _, _, engine = quadratic(mlo.solvers.CG(iterations=1, tol=0))
    engine.hypergradient("a")
    assert engine.diagnostics()["b"]["cg_residual"] > 1e-3


class Saddle(mlo.Problem):
    def training_step(self, batch):
        x, y = self.module.x, self.outer.module.x
        return 0.5 * (x[0] ** 2 - x[1] ** 2) + x @ y


class Top(mlo.Problem):
    def training_step(self, batch):
        return (self.inner.module.x**2).sum()


def saddle_engine(solver, caplog=None):
    from .quadratic import Vector as Param

    lo, hi = Param(torch.tensor([1.0, 1.0], dtype=DTYPE)), Param(torch.ones(2, dtype=DTYPE))
    inner = Saddle(
        "inner",
        lo,
        torch.optim.SGD(lo.parameters(), lr=0.1),
        config=mlo.ProblemConfig(solver=solver),
    )
    outer = Top("outer", hi, torch.optim.SGD(hi.parameters(), lr=0.0))
    return mlo.Engine(
        [outer, inner], {"outer": ["inner"]}, mlo.EngineConfig(progress=False, steps=2, log_every=1)
    )


def test_cg_warns_about_negative_curvature(caplog):
    engine = saddle_engine(mlo.solvers.CG(iterations=2, tol=0))
    with caplog.at_level(logging.WARNING, logger="mlo"):
        engine.run()
    assert engine.diagnostics()["inner"]["cg_negative_curvature"] == 1.0
    assert any("negative curvature" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("alpha", "iterations", "expected"),
    [
        (2.0, 5, "Neumann series grows"),
        # Eigenvalues of A lie in [1, 3]; α = 0.6 gives α‖H‖ = 1.8: converging, not safely.
        (0.6, 10, "may not converge"),
        (0.3, 5, None),
    ],
)
def test_neumann_warns_unless_alpha_times_curvature_is_below_one(
    caplog, alpha, iterations, expected
):
    spec = QuadraticSpec({"a": 3, "b": 4, "c": 2}, {"a": ["b"], "b": ["c"]})
    gen = torch.Generator().manual_seed(5)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in spec.dims.items()}
    solver = mlo.solvers.Neumann(iterations=iterations, alpha=alpha)
    engine = spec.build(solver, spec.solve_lowers(init), steps=1, log_every=1)
    with caplog.at_level(logging.WARNING, logger="mlo"):
        engine.run()
    diagnostics = engine.diagnostics()["b"]
    messages = [r.getMessage() for r in caplog.records]
    if expected is None:
        assert diagnostics["neumann_growth"] < 1 and diagnostics["neumann_alpha_h"] < 1
        assert not messages
    else:
        assert diagnostics["neumann_alpha_h"] >= 1
        assert any(expected in m for m in messages)


def test_unroll_reports_zero_replay_error_when_uppers_did_not_move():
    _spec, _values, engine = quadratic("unroll", {"a": 3, "b": 4}, {"a": ["b"]})
    engine.problems["a"].optimizer.param_groups[0]["lr"] = 0.0
    engine.step()
    engine.hypergradient("a")
    assert engine.diagnostics()["b"]["unroll_replay_error"] < 1e-14


@pytest.mark.parametrize(
    "solver",
    [mlo.solvers.CG(iterations=3, tol=0), mlo.solvers.Neumann(iterations=3), "unroll"],
    ids=["cg", "neumann", "unroll"],
)
def test_diagnostics_are_computed_on_reported_ticks_only_and_change_nothing_else(solver):
    """A tick that run() does not report skips the arithmetic only diagnostics need: the
    parameters are bit-identical to those of a run that diagnoses every tick, and the
    diagnostics read between reports are those of the latest reported tick."""
    spec = QuadraticSpec({"a": 3, "b": 4}, {"a": ["b"]})
    gen = torch.Generator().manual_seed(5)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in spec.dims.items()}
    every = spec.build(solver, init, log_every=1)
    sparse = spec.build(solver, init, log_every=4)
    seen = {}
    for tick in range(1, 10):
        every.step()
        sparse.step()
        seen[tick] = every.diagnostics()["b"]
        for n in "ab":
            assert torch.equal(every.problems[n].module.x, sparse.problems[n].module.x)
        reported = 1 if tick < 4 else 4 * (tick // 4)
        assert sparse.diagnostics()["b"] == seen[reported]
    assert seen[1] != seen[2]  # the diagnostics do move from tick to tick
    sparse.hypergradient("a")  # an explicit query always diagnoses
    every.hypergradient("a")
    assert sparse.diagnostics()["b"] == every.diagnostics()["b"] != seen[8]


def test_darts_leaves_parameters_bit_identical():
    _, _, engine = quadratic(mlo.solvers.Darts(epsilon=0.5))
    before = [p.detach().clone() for p in engine.problems["b"].module.parameters()]
    engine.hypergradient("a")
    after = list(engine.problems["b"].module.parameters())
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    assert all(isinstance(p, torch.nn.Parameter) for p in after)


@mlo.solvers.register("counting")
class Counting(mlo.solvers.FirstOrder):
    """first_order that counts its calls."""

    calls: ClassVar[list[str]] = []

    def vjp(self, level, v, parents):
        Counting.calls.append(level.name)
        return super().vjp(level, v, parents)


def test_solver_is_skipped_when_no_objective_reads_the_level():
    from .helpers import engine, problem

    Counting.calls.clear()
    blind = problem("blind")  # its objective does not read its lower level
    lower = problem("lower", parents=("blind",), solver="counting")
    engine([blind, lower], {"blind": ["lower"]}).step()
    assert Counting.calls == []

    watcher = problem("watcher", watched=("lower",))
    lower = problem("lower", parents=("watcher",), solver="counting")
    engine([watcher, lower], {"watcher": ["lower"]}).step()
    assert Counting.calls == ["lower"]


def test_solver_is_skipped_when_its_way_up_crosses_a_zero_jacobian():
    from .helpers import engine, problem

    Counting.calls.clear()
    top = problem("top", watched=("middle", "bottom"))
    middle = problem("middle", parents=("top",), solver="first_order")
    bottom = problem("bottom", parents=("middle",), solver="counting")
    engine([top, middle, bottom], {"top": ["middle"], "middle": ["bottom"]}).step()
    assert "bottom" not in Counting.calls  # its adjoint could only reach top via middle

    Counting.calls.clear()
    middle = problem("middle", parents=("top",), solver="cg")
    bottom = problem("bottom", parents=("middle",), solver="counting")
    top = problem("top", watched=("middle", "bottom"))
    engine([top, middle, bottom], {"top": ["middle"], "middle": ["bottom"]}).step()
    assert "bottom" in Counting.calls


def test_loss_is_not_differentiated_for_a_level_that_cannot_reach_the_top():
    """Behind a zero Jacobian the adjoint is not even computed: no backward pass reaches
    the bottom level's parameters while the top level updates."""
    from .helpers import engine, problem

    def build(middle_solver):
        top = problem("top", watched=("middle", "bottom"))
        middle = problem("middle", parents=("top",), solver=middle_solver)
        bottom = problem("bottom", parents=("middle",), solver="cg")
        run = engine([top, middle, bottom], {"top": ["middle"], "middle": ["bottom"]})
        reached = []
        run.problems["bottom"].module.x.register_hook(lambda g: reached.append(g))
        return run, reached

    run, reached = build("first_order")
    hypergradient = run.hypergradient("top")["x"]
    assert reached == []
    # first_order below top: the hypergradient is top's direct gradient x − 0 = x
    assert torch.equal(hypergradient, run.problems["top"].module.x.detach())

    run, reached = build("cg")
    run.hypergradient("top")
    assert reached  # with a non-zero Jacobian the adjoint is needed (and cg iterates)


@pytest.mark.parametrize(
    "knobs",
    [
        {"iterations": 2, "ridge": 0.3, "tol": 0.0},  # truncated, with a ridge
        {"iterations": 40, "tol": 1e-6},  # stops early: the later steps are zero
    ],
)
def test_cg_with_fused_mixed_products_gives_the_mixed_product_of_its_own_w(knobs):
    r"""CG's contribution is \(-M w\) with \(w\) its iterate (``fuse_mixed=False`` takes
    that product after the loop, the definition written out). Fused, each pass takes
    \(M p_k\) beside \(H p_k\) and \(M w = \sum_k \mathrm{step}_k M p_k\): the same
    number in float64, truncated or stopped early, on each level of a four-level graph
    (partial Jacobians; a nested level's total products keep the separate pass)."""
    from .nested_quadratic import NestedQuadraticSpec
    from .test_nested import GRAPHS

    dims, deps = GRAPHS["four_level_dag"]
    spec = NestedQuadraticSpec(dims, deps, seed=1)
    gen = torch.Generator().manual_seed(2)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in dims.items()}
    got = {}
    for fuse in (True, False):
        solver = mlo.solvers.CG(**knobs, fuse_mixed=fuse)
        got[fuse] = spec.build(solver, init, jacobian="partial").hypergradient("a")["x"]
    assert float(got[False].norm()) > 1e-3
    assert torch.allclose(got[True], got[False], rtol=1e-12, atol=1e-14)
