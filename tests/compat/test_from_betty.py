"""``mlo.from_betty`` (issue 16) on Betty's own kinds of programs: the converted program
trains the same modules to Betty's parameters where Betty's solver is right (neumann, and
first_order=False), to the closed form where it is not (cg), and to the nested truth on a
three-level chain; what has no counterpart is refused by name, and nothing is copied."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import mlo
from mlo.compat.betty import BettyProgram

from ..mlo.nested_quadratic import NestedQuadraticSpec
from ..mlo.test_nested import GRAPHS

pytest.importorskip("betty", reason="betty-ml comes with the dev extra: pip install -e '.[dev]'")
from . import betty_programs as programs  # after the skip: it imports betty
from .batches import record_inner_batches, updates


def betty_trajectory(engine, iterations: int) -> list[dict[str, torch.Tensor]]:
    """Betty's own loop, one iteration at a time: the parameters after each."""
    engine.train()
    snapshots = []
    for _ in range(iterations):
        engine.global_step += 1
        engine.train_step()
        snapshots.append(parameters(engine.problems))
    return snapshots


def mlo_trajectory(program: BettyProgram, ticks: int) -> list[dict[str, torch.Tensor]]:
    snapshots = []
    for _ in range(ticks):
        program.step()
        snapshots.append(parameters([p.betty for p in program.problems.values()]))
    return snapshots


def parameters(problems) -> dict[str, torch.Tensor]:
    return {
        f"{p.name}.{k}": v.detach().clone()
        for p in problems
        for k, v in p.module.named_parameters()
    }


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize(
    "build, top",
    [
        (programs.logistic_hpo, "outer"),
        (programs.meta_weight_net, "meta"),
        (programs.darts_search, "arch"),
    ],
    ids=["logistic-hpo", "meta-weight-net", "darts-search"],
)
def test_neumann_programs_train_to_bettys_parameters(build, top):
    iterations = 6
    reference = betty_trajectory(build(iterations=iterations), iterations)
    program = mlo.from_betty(build(iterations=iterations), progress=False)
    assert program.config.steps == iterations  # one Betty iteration is one tick here
    ours = mlo_trajectory(program, iterations)
    start = parameters([p.betty for p in program.problems.values()])
    for step, (mine, theirs) in enumerate(zip(ours, reference)):
        assert max_difference(mine, theirs) < 1e-10, f"iteration {step + 1}"
    # The upper level moved: the comparison is of a real trajectory.
    assert max_difference(ours[0], ours[-1]) > 1e-4 or max_difference(start, ours[0]) > 1e-4
    assert any(k.startswith(top) for k in ours[-1])


def test_the_hpo_hypergradient_equals_bettys_at_the_same_state():
    betty_engine = programs.logistic_hpo()
    betty_trajectory(betty_engine, 2)
    program = mlo.from_betty(programs.logistic_hpo(), progress=False)
    mlo_trajectory(program, 2)
    # Betty's gradient of the upper level after its inner step, by Betty's own backward:
    inner, outer = program.problems["inner"].betty, program.problems["outer"].betty
    ours = program.hypergradient("outer")["log_l2"]
    batch = program.problems["outer"].batch  # the batches the engine evaluates at
    inner.cur_batch = program.problems["inner"].batch
    loss = outer.training_step(batch)
    outer.backward(loss, outer.trainable_parameters(), outer.paths)
    theirs = outer.module.log_l2.grad.clone()
    outer.module.log_l2.grad = None
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-13)
    assert float(theirs.norm()) > 1e-6


def test_first_order_false_trains_like_betty_without_the_implicit_term():
    iterations = 4
    reference = betty_trajectory(_first_order(programs.logistic_hpo(iterations=iterations)), 4)
    program = mlo.from_betty(_first_order(programs.logistic_hpo(iterations=iterations)))
    assert isinstance(program.problems["inner"].config.solver, mlo.solvers.FirstOrder)
    for mine, theirs in zip(mlo_trajectory(program, iterations), reference):
        assert max_difference(mine, theirs) < 1e-10


def _first_order(engine):
    engine.problems[0].config.first_order = False  # the upper: no implicit term in Betty
    return engine


def test_cg_gives_the_closed_form_where_bettys_cg_does_not():
    engine, truth = programs.quadratic_bilevel(dim=6, cg_iterations=6)
    program = mlo.from_betty(engine, progress=False)
    ours = program.hypergradient("upper")["x"]
    assert float((ours - truth).norm() / truth.norm()) < 1e-10
    # Betty's own cg on the same state (its backward after loading the lower's batch).
    upper, lower = engine.problems
    lower.cur_batch = lower.train_data_loader[0][0]
    loss = upper.training_step(lower.cur_batch)
    upper.backward(loss, upper.trainable_parameters(), upper.paths)
    theirs = upper.module.x.grad
    error = float((theirs - truth).norm() / truth.norm())
    assert error > 0.05, f"Betty's cg is off by {error:.3g}"  # the documented bug


def test_a_three_level_program_gets_the_nested_hypergradient():
    dims, deps = GRAPHS["three_level_chain"]
    spec = NestedQuadraticSpec(dims, deps, seed=0)
    gen = torch.Generator().manual_seed(100)
    init = {n: torch.randn(d, generator=gen, dtype=programs.DTYPE) for n, d in dims.items()}
    values = spec.solve_lowers(init)
    program = mlo.from_betty(programs.nested_chain(spec, values), progress=False)
    truth = spec.total_derivative("a", values)
    ours = program.hypergradient("a")["x"]
    assert float((ours - truth).norm() / truth.norm()) < 1e-8
    # Betty's definition (the lower levels' partial Jacobians) is another number.
    partial = mlo.from_betty(
        programs.nested_chain(spec, values),
        progress=False,
        problems={"b": {"jacobian": "partial"}},
    )
    other = partial.hypergradient("a")["x"]
    assert float((other - truth).norm() / truth.norm()) > 1e-3


def test_run_trains_the_betty_modules_in_place_and_validates():
    betty_engine = programs.logistic_hpo(iterations=8, engine_class=programs.ValidatedEngine)
    modules = {p.name: p.module for p in betty_engine.problems}
    before = parameters(betty_engine.problems)
    program = mlo.from_betty(betty_engine, progress=False)
    for name, level in program.problems.items():
        assert level.module is modules[name]  # the user's modules, not copies
        assert level.optimizer is level.betty.optimizer
    program.run()
    after = parameters(betty_engine.problems)
    assert program.tick == 8
    assert max_difference(before, after) > 1e-3  # Betty's problems hold the trained weights
    # valid_step=4 Betty iterations: validation after iterations 4 and 8.
    assert [tick for tick, _ in program.validations] == [4, 8]
    assert all(0.0 <= stats["accuracy"] <= 1.0 for _, stats in program.validations)


def test_steps_count_bettys_upper_updates_with_unrolling_and_warmup():
    # unroll 2 and warm-up 3: the upper first updates at the 4th inner update, then every
    # 2nd, so 12 Betty iterations give 5 upper updates (after 4, 6, 8, 10, 12).
    engine = programs.logistic_hpo(iterations=12, unroll_steps=2, warmup_steps=3)
    program = mlo.from_betty(engine, progress=False)
    assert program.config.steps == 5
    inner = program.problems["inner"].config
    assert (inner.unroll_steps, inner.warmup_steps) == (2, 2)
    program.run()
    assert program.updates == {"outer": 5, "inner": 12}
    betty = programs.logistic_hpo(iterations=12, unroll_steps=2, warmup_steps=3)
    betty.run()  # Betty's own count of the same program
    assert {p.name: p.count for p in betty.problems} == program.updates


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda e: setattr(e.problems[1].config, "type", "reinforce"), "type='reinforce'"),
        (lambda e: setattr(e.problems[1].config, "fp16", True), "fp16"),
        (lambda e: setattr(e.problems[1].config, "gradient_accumulation", 2), "accumulation"),
        (lambda e: setattr(e.config, "roll_back", True), "roll_back"),
        (lambda e: setattr(e.config, "early_stopping", True), "early_stopping"),
        (
            lambda e: setattr(e.problems[1], "custom_optimizer_step", lambda: None),
            "custom_optimizer_step",
        ),
        (lambda e: setattr(e.problems[1], "param_callback", lambda p: None), "param_callback"),
    ],
    ids=["reinforce", "fp16", "accumulation", "roll_back", "early_stop", "hook", "callback"],
)
def test_what_has_no_counterpart_is_refused_by_name(change, named):
    engine = programs.logistic_hpo()
    change(engine)
    before = parameters(engine.problems)
    with pytest.raises(mlo.SetupError, match=named):
        mlo.from_betty(engine)
    assert max_difference(before, parameters(engine.problems)) == 0.0


def test_an_engine_that_overrides_train_step_is_refused():
    engine = programs.logistic_hpo()

    class Custom(type(engine)):
        def train_step(self):
            pass

    engine.__class__ = Custom
    with pytest.raises(mlo.SetupError, match="train_step"):
        mlo.from_betty(engine)


def test_a_non_betty_argument_and_unknown_overrides_are_refused():
    with pytest.raises(mlo.SetupError, match=r"betty\.engine\.Engine"):
        mlo.from_betty(object())
    with pytest.raises(mlo.SetupError, match="not problems"):
        mlo.from_betty(programs.logistic_hpo(), problems={"middle": {}})


def test_without_betty_installed_the_error_says_how_to_install_it(monkeypatch):
    engine = programs.logistic_hpo()
    for name in [m for m in sys.modules if m == "betty" or m.startswith("betty.")]:
        monkeypatch.setitem(sys.modules, name, None)  # "import betty" now fails
    with pytest.raises(mlo.SetupError, match=r"mlo\[betty\]"):
        mlo.from_betty(engine)


def test_an_iterative_problem_is_refused_with_the_alternative():
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import IterativeProblem

    class Inner(IterativeProblem):
        def training_step(self, batch):
            return self(batch[0]).sum()

    hyper = programs.LogL2(16)
    outer = programs.Hyperparameters(
        name="outer",
        module=hyper,
        optimizer=torch.optim.Adam(hyper.parameters(), lr=0.05),
        train_data_loader=[(torch.zeros(2, 16, dtype=torch.float64), torch.zeros(2))],
        config=Config(),
        device="cpu",
    )
    net = torch.nn.Linear(16, 1).double()
    inner = Inner(
        name="inner",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        train_data_loader=[(torch.zeros(2, 16, dtype=torch.float64),)],
        config=Config(),
        device="cpu",
    )
    with warnings.catch_warnings():  # Betty's deprecated functorch call, at construction
        warnings.simplefilter("ignore")
        engine = Engine(
            problems=[outer, inner],
            config=EngineConfig(train_iters=2),
            dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
        )
    with pytest.raises(mlo.SetupError, match=r"IterativeProblem.*'solver': 'unroll'"):
        mlo.from_betty(engine)


def test_bettys_sama_type_maps_to_mlos_sama_at_bettys_step_and_scale():
    from types import SimpleNamespace

    from mlo.compat.betty import _solver

    upper = SimpleNamespace(name="upper", config=SimpleNamespace(first_order=True))
    config = SimpleNamespace(type="sama", sama_adam_alpha=0.02, darts_alpha=0.01)  # Betty 0.2.1
    solver = _solver(SimpleNamespace(name="lower", config=config), [upper])
    assert solver == mlo.solvers.Sama(epsilon=0.02, xi=1.0)


def test_the_bridge_reads_bettys_batches_counts_bettys_steps_and_adds_no_call():
    def inner_batches(engine, run) -> list[torch.Tensor]:
        seen = record_inner_batches(engine)
        run(engine)
        return updates(seen)

    theirs = inner_batches(
        programs.logistic_hpo(iterations=10, shuffled=True), lambda e: betty_trajectory(e, 10)
    )
    program = None

    def convert_and_run(engine):
        nonlocal program
        program = mlo.from_betty(engine, progress=False)
        program.run()

    ours = inner_batches(programs.logistic_hpo(iterations=10, shuffled=True), convert_and_run)
    # The iterators Betty's set-up made are the ones read: the same shuffled batches.
    assert len(ours) == len(theirs) == 10
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert program.betty_engine.global_step == 10  # Betty's iteration count advances
    assert program.config.preflight is False  # no extra training_step call before training


def test_every_blocker_is_named_at_once_with_the_way_to_run_it_on_mlo_betty():
    engine = programs.logistic_hpo()
    engine.config.roll_back = True
    engine.problems[1].config.gradient_accumulation = 4
    engine.problems[0].param_callback = lambda: None
    with pytest.raises(mlo.SetupError) as caught:
        mlo.from_betty(engine)
    message = str(caught.value)
    assert "3 thing(s)" in message
    for named in ("roll_back=True", "gradient_accumulation=4", "param_callback"):
        assert named in message
    assert "change the program's betty imports to mlo.betty" in message


def test_an_l2u_only_edge_is_refused_with_mlo_betty_as_the_way():
    # Betty's learning-by-ignoring structure: finetune reads pretrain, but pretrain's
    # solution does not follow finetune; Betty differentiates reweight along the path
    # through finetune, which a converted upper/lower graph would drop.
    engine = programs.learning_by_ignoring()
    before = parameters(engine.problems)
    with pytest.raises(mlo.SetupError) as caught:
        mlo.from_betty(engine)
    message = str(caught.value)
    assert "2 thing(s)" in message
    assert "l2u edge 'pretrain' → 'finetune'" in message
    assert "l2u edge 'finetune' → 'reweight'" in message
    assert "'pretrain' → 'reweight'" not in message  # under the u2l edge reweight → pretrain
    assert "change the program's betty imports to mlo.betty" in message
    assert max_difference(before, parameters(engine.problems)) == 0.0
