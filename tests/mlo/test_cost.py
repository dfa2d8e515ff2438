"""The estimate of what a tick costs (``mlo.hypergradient.cost``): exact where nothing is
nested (it is then a count of autograd passes, checked by counting them), an estimate
where levels are nested, shown by ``describe()``, and said once at start when exactness
costs more than 10x the partial Jacobian."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import mlo
import mlo.autodiff.products as products
from mlo.autodiff.recompute import REVERSE_MIXED


class Vec(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(value.clone())


def dense_chain(
    n: int,
    solver: str = "darts",
    jacobian="total",
    dim: int = 4,
    unroll_steps: int = 1,
    hvp: str = "auto",
) -> mlo.Engine:
    """n levels, each reading every other: f_k = ½‖x_k‖² + x_kᵀ Σ_{j≠k} B_kj x_j / n."""
    gen = torch.Generator().manual_seed(n)
    b = {(k, j): torch.randn(dim, dim, generator=gen) / 4 for k in range(n) for j in range(n)}
    names = [f"l{k}" for k in range(n)]

    class Level(mlo.Problem):
        def training_step(self, batch):
            k = names.index(self.name)
            values = [self.module.v if m == self.name else getattr(self, m).module.v for m in names]
            x = values[k]
            coupled = sum(b[(k, j)] @ values[j] for j in range(n) if j != k)
            return 0.5 * x @ x + x @ coupled / n

    problems = []
    for name in names:
        module = Vec(torch.randn(dim, generator=gen))
        config = mlo.ProblemConfig(
            solver=solver, jacobian=jacobian, unroll_steps=unroll_steps, hvp=hvp
        )
        problems.append(
            Level(name, module, torch.optim.SGD(module.parameters(), lr=0.05), config=config)
        )
    deps = {names[k]: names[k + 1 :] for k in range(n - 1)}
    return mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))


def passes_of_one_tick(engine: mlo.Engine, monkeypatch) -> int:
    count = [0]
    run = products._engine_run_backward

    def counted(*args, **kwargs):
        count[0] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(products, "_engine_run_backward", counted)
    engine.step()
    monkeypatch.setattr(products, "_engine_run_backward", run)
    return count[0]


def one_tick(engine: mlo.Engine) -> dict[str, int]:
    return {name: 1 for name in engine.problems}


@pytest.mark.parametrize(
    "n, solver, expected",
    [
        (2, "darts", 4),  # l1: 1; l0: 1 + darts' 2 gradients
        # l1: 1; l0: 1 + (the gradient, 3 Hessian-vector products, 1 mixed product)
        (2, mlo.solvers.CG(iterations=3, fuse_mixed=False), 7),
        # the same, each mixed part in its Hessian-vector product's pass
        (2, mlo.solvers.CG(iterations=3, fuse_mixed=True), 6),
        # "auto": here the mixed part (a matrix-vector product by B) costs more than the
        # Hessian-vector product (I), so the mixed product stays a pass of its own
        (2, mlo.solvers.CG(iterations=3), 7),
        (3, "darts", 9),  # l2: 1; l1: 1 + 2; l0: 1 + 2 + 2
        (3, mlo.solvers.Neumann(iterations=2), 15),  # l2: 1; l1: 1 + 4; l0: 1 + 4 + 4
    ],
)
def test_without_nested_levels_the_estimate_is_the_count_of_autograd_passes(
    n, solver, expected, monkeypatch
):
    engine = dense_chain(n, solver, jacobian="partial")
    engine.step()  # the first tick also evaluates each level's structure once
    assert engine.hypergradients.cost.per_tick(one_tick(engine), exact=True) == expected
    assert passes_of_one_tick(engine, monkeypatch) == expected


def test_cg_auto_fuses_where_the_parent_is_read_cheaply_and_the_estimate_follows(
    monkeypatch,
):
    """f_y = ½ eˢ‖A y − t‖²: a Hessian-vector product multiplies by AᵀA, the mixed part
    by the scalar s is elementwise work; auto fuses, and counts one pass fewer once it
    has (2 ticks: before the first solve the estimate cannot know)."""
    gen = torch.Generator().manual_seed(0)
    a, t = torch.randn(30, 20, generator=gen), torch.randn(30, generator=gen)

    class Lower(mlo.Problem):
        def training_step(self, batch):
            residual = a @ self.module.v - t
            return 0.5 * self.upper.module.v[0].exp() * residual @ residual

    class Upper(mlo.Problem):
        def training_step(self, batch):
            return (self.lower.module.v**2).sum() + self.module.v[0] ** 2

    solver = mlo.solvers.CG(iterations=3)
    y, s = Vec(torch.zeros(20)), Vec(torch.zeros(1))
    lower = Lower(
        "lower",
        y,
        torch.optim.SGD(y.parameters(), lr=0.01),
        config=mlo.ProblemConfig(solver=solver),
    )
    upper = Upper("upper", s, torch.optim.SGD(s.parameters(), lr=0.01))
    engine = mlo.Engine([upper, lower], {"upper": ["lower"]}, mlo.EngineConfig(progress=False))
    ticks = {name: 1 for name in engine.problems}
    assert engine.hypergradients.cost.per_tick(ticks, exact=True) == 7  # not yet decided
    engine.step()
    assert engine.hypergradients.memos["lower"] == {("cg.fuse_mixed", ((1,),)): True}
    # lower: 1; upper: 1 + (the gradient, 3 Hessian-vector products with mixed parts)
    assert engine.hypergradients.cost.per_tick(ticks, exact=True) == 6
    assert passes_of_one_tick(engine, monkeypatch) == 6


@pytest.mark.parametrize("hvp", ["forward", "finite_difference"])
def test_cg_counts_its_mixed_product_apart_where_products_are_not_reverse_modes(hvp, monkeypatch):
    # Counted: l1: 1; l0: 1 + (3 Hessian-vector products, then 1 mixed product), one
    # backward pass each in forward mode, two by differences. The estimate prices the
    # same 4 products apart plus a gradient these modes do not build (an estimate here,
    # not a count), not the 3 fused passes of reverse mode.
    engine = dense_chain(2, mlo.solvers.CG(iterations=3), jacobian="partial", hvp=hvp)
    engine.step()
    assert engine.hypergradients.cost.per_tick(one_tick(engine), exact=True) == 7
    counted = passes_of_one_tick(engine, monkeypatch)
    assert counted == {"forward": 6, "finite_difference": 10}[hvp]


def test_recompute_counts_a_gradient_and_a_double_backward_for_every_product(monkeypatch):
    # l1: 1; l0: 1 + (3 Hessian-vector products, each from a graph built for it: its
    # create_graph backward, then its double backward) + 1 mixed product by one
    # forward-over-reverse pass
    engine = dense_chain(2, mlo.solvers.CG(iterations=3), jacobian="partial", hvp="recompute")
    engine.step()
    assert engine.hypergradients.cost.per_tick(one_tick(engine), exact=True) == 9
    assert passes_of_one_tick(engine, monkeypatch) == 9
    assert "hvp=recompute mixed=forward-over-reverse passes/tick=1" in engine.describe()
    choices = engine.hypergradients.memos["l1"]  # the solver's Level.memo
    assert not [k for k in choices if k == "l1"]  # the count keeps its cache elsewhere
    # where forward mode fails on the objective, the mixed product is two passes too
    choices[REVERSE_MIXED] = "no forward-mode rule"
    assert engine.hypergradients.cost.per_tick(one_tick(engine), exact=True) == 10
    assert passes_of_one_tick(engine, monkeypatch) == 10


@pytest.mark.parametrize(
    "checkpoint, expected",
    [
        (False, 10),  # l1: 4 steps, 1 pass each; l0: 1 + (4 replayed gradients + 1 backward)
        (True, 17),  # l0: 1 + 3 passes a replayed step (no graph, with one, its backward)
    ],
)
def test_unroll_passes_are_counted_with_and_without_checkpointing(
    checkpoint, expected, monkeypatch
):
    solver = mlo.solvers.Unroll(checkpoint=checkpoint)
    engine = dense_chain(2, solver, jacobian="partial", unroll_steps=4)
    engine.step()  # fills the window of 4 recorded steps
    assert engine.hypergradients.cost.per_tick({"l0": 1, "l1": 4}, exact=True) == expected
    assert passes_of_one_tick(engine, monkeypatch) == expected


@pytest.mark.parametrize(("n", "expected"), [(3, 13), (4, 40), (5, 121)])
def test_with_nested_levels_the_count_is_still_exact(n, expected, monkeypatch):
    # dense chain, darts: a nested level's call is 2 passes through its total gradient,
    # each 1 + its own propagation's passes; at 3 levels: l2 1, l1 1 + 2, l0 1 + 2 + 2·3.
    engine = dense_chain(n)
    engine.step()
    assert engine.hypergradients.cost.per_tick(one_tick(engine), exact=True) == expected
    assert passes_of_one_tick(engine, monkeypatch) == expected
    assert engine.hypergradients.cost.per_tick(one_tick(engine), exact=False) == n * n


def test_describe_shows_each_levels_mode_and_passes_per_tick():
    engine = dense_chain(3)
    engine.step()
    text = engine.describe()
    assert "l1: solver=darts" in text and "jacobian=total (it reads its lower levels)" in text
    assert "l0: top level" in text and "passes/tick=9 (partial: 5)" in text
    assert "autograd passes per tick: 13 (exact nested Jacobians); 9 with" in text
    assert "estimated time ratio at least 1.9x" in text


def test_an_expensive_exactness_is_said_once_at_start_with_the_switch(caplog):
    with caplog.at_level(logging.WARNING, logger="mlo"):
        engine = dense_chain(5)
        engine.step()
        engine.step()
    said = [r.getMessage() for r in caplog.records if "exact nested" in r.getMessage()]
    assert len(said) == 1, said
    assert "ProblemConfig(jacobian='partial') on 'l1', 'l2', 'l3'" in said[0]
    assert "x the partial Jacobian" in said[0]


@pytest.mark.parametrize("n, jacobian", [(3, "total"), (5, "partial"), (5, None)])
def test_a_cheap_or_partial_run_says_nothing(n, jacobian, caplog):
    with caplog.at_level(logging.WARNING, logger="mlo"):
        dense_chain(n, jacobian=jacobian).step()
    assert not [r for r in caplog.records if "exact nested" in r.getMessage()]


def test_the_default_is_total_with_exact_solvers_and_partial_with_darts():
    # darts and sama approximate H⁻¹ by a scaled identity: their nested term is below
    # their own error (docs/concepts.md), so by default a nested level uses the partial
    # Jacobian with them; cg, neumann and unroll converge to the exact one, and get it.
    darts, cg = dense_chain(3, "darts", None), dense_chain(3, "cg", None)
    for engine in (darts, cg):
        engine.step()
    assert "jacobian=partial (darts's default; jacobian='total' for the exact" in darts.describe()
    assert "jacobian=total (it reads its lower levels)" in cg.describe()
    assert not mlo.ProblemConfig(solver="sama").uses_total()
    for solver in ("cg", "neumann", "unroll"):
        assert mlo.ProblemConfig(solver=solver).uses_total()
    assert mlo.ProblemConfig(solver="darts", jacobian="total").uses_total()


def test_it_is_said_before_the_first_tick_runs(caplog, monkeypatch):
    # At 6 levels the first tick takes minutes: the message must not wait for it.
    engine = dense_chain(6)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.hypergradients, "total_gradient", stop)
    with caplog.at_level(logging.WARNING, logger="mlo"), pytest.raises(KeyboardInterrupt):
        engine.step()
    said = [r.getMessage() for r in caplog.records if "exact nested" in r.getMessage()]
    assert len(said) == 1 and "at least 54x" in said[0], said
