"""Invalid graphs, configs and objectives fail early with messages that name the fix."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mlo

from .helpers import Scalar, engine, problem


def test_cycle_is_refused_and_named():
    a, b, c = problem("a"), problem("b"), problem("c")
    with pytest.raises(mlo.GraphError, match=r"cycle: a → b → c → a"):
        engine([a, b, c], {"a": ["b"], "b": ["c"], "c": ["a"]})


def test_self_loop_is_refused():
    a, b = problem("a"), problem("b")
    with pytest.raises(mlo.GraphError, match="its own lower level"):
        engine([a, b], {"a": ["a", "b"]})


def test_unknown_name_in_dependencies_is_refused():
    a, b = problem("a"), problem("b")
    with pytest.raises(mlo.GraphError, match=r"'typo'.*not one of the problems \(a, b\)"):
        engine([a, b], {"a": ["typo"]})


def test_problem_object_outside_the_problem_list_is_refused():
    a, b, stray = problem("a"), problem("b"), problem("stray")
    with pytest.raises(mlo.GraphError, match="'stray'"):
        engine([a, b], {a: [b, stray]})


def test_duplicate_names_are_refused():
    with pytest.raises(mlo.GraphError, match="two problems are named 'a'"):
        engine([problem("a"), problem("a")], {})


def test_disconnected_problem_is_refused():
    with pytest.raises(mlo.GraphError, match="'c' is not connected"):
        engine([problem("a"), problem("b"), problem("c")], {"a": ["b"]})


def test_unknown_solver_lists_the_valid_ones():
    with pytest.raises(mlo.SetupError) as info:
        mlo.ProblemConfig(solver="newton")
    message = str(info.value)
    assert "solver" in message and "unknown solver 'newton'" in message
    for name in ("first_order", "darts", "neumann", "cg", "unroll"):
        assert name in message


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: mlo.ProblemConfig(unroll_steps=0), "unroll_steps"),
        (lambda: mlo.ProblemConfig(warmup_steps=-1), "warmup_steps"),
        (lambda: mlo.ProblemConfig(grad_clip=0.0), "grad_clip"),
        (lambda: mlo.ProblemConfig(unroll_step=2), "unroll_step"),
        (lambda: mlo.EngineConfig(steps=-5), "steps"),
        (lambda: mlo.EngineConfig(log_every=0), "log_every"),
        (lambda: mlo.EngineConfig(on_nonfinite="ignore"), "on_nonfinite"),
        (lambda: mlo.solvers.CG(iterations=0), "iterations"),
        (lambda: mlo.solvers.CG(ridge=-1.0), "ridge"),
        (lambda: mlo.solvers.Neumann(alpha=0.0), "alpha"),
        (lambda: mlo.solvers.Darts(epsilon=-0.1), "epsilon"),
    ],
)
def test_invalid_config_values_name_the_field(factory, field):
    with pytest.raises(mlo.SetupError) as info:
        factory()
    assert field in str(info.value)


def test_non_scalar_loss_is_refused():
    class Vectorial(mlo.Problem):
        def training_step(self, batch):
            return self.module.x * torch.ones(3)

    m = Scalar()
    p = Vectorial("solo", m, torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"'solo' returned a tensor of shape \(3,\).*scalar"):
        engine([p], {}).step()


def test_loss_that_is_not_a_tensor_is_refused():
    class Floaty(mlo.Problem):
        def training_step(self, batch):
            return 1.0

    m = Scalar()
    p = Floaty("solo", m, torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(TypeError, match=r"returned float; it must return a scalar torch\.Tensor"):
        engine([p], {}).step()


class BlowsUp(mlo.Problem):
    """Its third batch is NaN."""

    def training_step(self, batch):
        return 0.5 * (self.module.x**2).sum() * batch + self.outer.module.x.sum() * 0


def nan_engine(**config):
    inner_module, outer = Scalar(1.0), problem("outer")
    inner = BlowsUp(
        "inner",
        inner_module,
        torch.optim.SGD(inner_module.parameters(), lr=0.1),
        data=[1.0, 1.0, math.nan, 1.0],
        config=mlo.ProblemConfig(solver="first_order"),
    )
    return engine([outer, inner], {"outer": ["inner"]}, steps=8, **config), inner


@pytest.mark.parametrize("check_every", [1, 4])
def test_non_finite_loss_names_the_problem_and_the_step(check_every):
    e, _ = nan_engine(check_finite_every=check_every)
    with pytest.raises(
        mlo.NonFiniteError,
        match=r"problem 'inner' produced a non-finite loss "
        r"\(nan\) at step 3",
    ):
        e.run()


def test_non_finite_from_a_solver_is_named():
    class Poisoned(mlo.solvers.FirstOrder):
        def vjp(self, level, v, parents):
            result = super().vjp(level, v, parents)
            return mlo.solvers.SolverResult([[t + math.inf for t in g] for g in result.vjps])

    upper = problem("upper", watched=("lower",))
    lower = problem("lower", parents=("upper",), solver=Poisoned())
    with pytest.raises(
        mlo.NonFiniteError,
        match=r"problem 'upper' produced a non-finite "
        r"hypergradient from level 'lower'",
    ):
        engine([upper, lower], {"upper": ["lower"]}).step()


def test_skip_mode_survives_a_nan_and_finishes():
    e, inner = nan_engine(on_nonfinite="skip")
    e.run()
    assert e.tick == 8 and e.skipped == {"outer": 0, "inner": 2}  # batch 3 comes round twice
    assert torch.isfinite(inner.module.x).all()
    assert e.updates["inner"] == 8 - 2


def test_skip_mode_raises_after_too_many_consecutive_skips():
    e, _ = nan_engine(on_nonfinite="skip", max_consecutive_skips=1)
    with pytest.raises(mlo.NonFiniteError, match="1 consecutive updates skipped"):
        e.run()


def test_problem_without_trainable_parameters_is_refused():
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="'frozen' has no trainable parameters"):
        mlo.Problem("frozen", frozen, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))


def test_optimizer_over_foreign_tensors_is_refused():
    m = Scalar()
    with pytest.raises(ValueError, match="not a trainable parameter of its module"):
        mlo.Problem("p", m, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))


def test_problem_name_must_be_an_identifier():
    m = Scalar()
    with pytest.raises(ValueError, match="must be a Python identifier"):
        mlo.Problem("my level", m, torch.optim.SGD(m.parameters(), lr=1))


def test_unknown_peer_attribute_lists_the_problems():
    a, b = problem("a"), problem("b")
    engine([a, b], {"a": ["b"]})
    with pytest.raises(AttributeError, match="has no attribute 'c'; problems in its engine: a"):
        _ = b.c


def test_empty_data_is_refused_with_the_problem_named():
    m = Scalar()
    p = mlo.Problem("solo", m, torch.optim.SGD(m.parameters(), lr=1), data=[])
    with pytest.raises(mlo.DataError, match="'solo' yields no batches"):
        engine([p], {}).step()


def test_exhausted_generator_is_explained():
    class Solo(mlo.Problem):
        def training_step(self, batch):
            return (self.module.x * batch).sum()

    m = Scalar()
    p = Solo(
        "solo", m, torch.optim.SGD(m.parameters(), lr=1), data=(torch.ones(1) for _ in range(2))
    )
    e = engine([p], {})
    e.step()
    e.step()
    with pytest.raises(mlo.DataError, match="one-shot iterator"):
        e.step()


def test_hypergradient_of_unknown_problem():
    a, b = problem("a"), problem("b", parents=("a",))
    e = engine([a, b], {"a": ["b"]})
    with pytest.raises(mlo.UnknownProblemError, match="unknown problem 'z'; problems: a, b"):
        e.hypergradient("z")


def test_batch_that_does_not_fit_the_model_fails_before_training():
    class Classifier(mlo.Problem):
        def training_step(self, batch):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.module(x), y)

    net = nn.Linear(4, 3)
    bad = [(torch.randn(2, 5), torch.tensor([0, 1]))]  # 5 features for a 4-input model
    p = Classifier("classifier", net, torch.optim.SGD(net.parameters(), lr=0.1), data=bad)
    e = engine([p], {}, steps=3)
    before = net.weight.detach().clone()
    with pytest.raises(
        RuntimeError,
        match=r"problem 'classifier' fails on its first batch, "
        r"before any training .*\(a tensor of shape \(2, 5\)",
    ):
        e.run()
    assert torch.equal(before, net.weight) and e.tick == 0 and p.stream.position == 0


def test_loaders_sharing_a_generator_are_named_in_a_warning(caplog):
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 2))

    def loader():
        return torch.utils.data.DataLoader(data, batch_size=2, shuffle=True, generator=generator)

    class Level(mlo.Problem):
        def training_step(self, batch):
            return self.module.weight.sum()

    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    problems = [
        Level("upper", a, torch.optim.SGD(a.parameters(), lr=0.1), data=loader()),
        Level("lower", b, torch.optim.SGD(b.parameters(), lr=0.1), data=loader()),
    ]
    with caplog.at_level("WARNING", logger="mlo"):
        mlo.Engine(problems, {"upper": ["lower"]})
    assert "'upper' and 'lower' shuffle their data with the same torch.Generator" in caplog.text


def _batch_norm_levels(convert_after: bool):
    """A 2-level darts problem whose lower model has an affine batch norm, converted to
    mlo.SyncBatchNorm before or after its Problem is made."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randn(16, 1, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    scale = nn.Linear(3, 3, bias=False).double()
    if not convert_after:
        mlo.convert_sync_batchnorm(model)

    class Fit(mlo.Problem):
        def training_step(self, batch):
            return F.mse_loss(self.module(self.outer.module(x)), y)

    class Outer(mlo.Problem):
        def training_step(self, batch):
            return F.mse_loss(self.fit.module(x), y) + 0.1 * self.module.weight.square().sum()

    fit = Fit(
        "fit",
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        config=mlo.ProblemConfig(solver="darts"),
    )
    outer = Outer("outer", scale, torch.optim.SGD(scale.parameters(), lr=0.1))
    if convert_after:
        mlo.convert_sync_batchnorm(model)  # keeps the parameters, moves them to new modules
    return mlo.Engine([outer, fit], {"outer": ["fit"]}, mlo.EngineConfig(progress=False))


def test_a_module_changed_after_its_problem_is_evaluated_through_its_new_modules():
    """darts evaluates the lower level at θ ± r·v by substituting tensors into the modules
    that hold the parameters; after convert_sync_batchnorm those are the new batch norms,
    so the hypergradient is that of a model converted before its Problem was made."""
    after, before = _batch_norm_levels(True), _batch_norm_levels(False)
    after.step()
    before.step()
    got, want = after.hypergradient("outer")["weight"], before.hypergradient("outer")["weight"]
    assert torch.allclose(got, want, rtol=1e-12, atol=0)


def test_parameters_replaced_after_the_problem_is_made_are_refused():
    class Quad(mlo.Problem):
        def training_step(self, batch):
            return self.module.weight.square().sum()

    model = nn.Linear(2, 1)
    p = Quad("q", model, torch.optim.SGD(model.parameters(), lr=0.1))
    model.weight = nn.Parameter(torch.zeros(1, 2))  # the optimizer still holds the old one
    with pytest.raises(mlo.SetupError, match="replaced after the Problem was made"):
        mlo.Engine([p], {})
