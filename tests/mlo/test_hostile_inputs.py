"""Hostile inputs to the engine API (issue 10, items 5, 8, 9 and 11): each is refused with
an :class:`mlo.MLOError` naming the problem and the fix, or handled as documented."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mlo

from .helpers import Scalar, engine, problem


class Reads(mlo.Problem):
    """f = ½ (x − upper's x)²; the upper's objective is ½ x_lower²."""

    def training_step(self, batch):
        return 0.5 * ((self.module.x - self.upper.module.x) ** 2).sum()


class Top(mlo.Problem):
    def training_step(self, batch):
        return 0.5 * (self.lower.module.x**2).sum()


def pair(lower_lr: float = 0.1, lower_cls=Reads, upper_cls=Top, **config):
    um, lm = Scalar(1.0), Scalar(0.0)
    upper = upper_cls("upper", um, torch.optim.SGD(um.parameters(), lr=0.1))
    lower = lower_cls("lower", lm, torch.optim.SGD(lm.parameters(), lr=lower_lr))
    return engine([upper, lower], {"upper": ["lower"]}, **config), upper, lower


# ------------------------------------------------------------------ item 5: NaN handling


@pytest.mark.parametrize("check_every", [1, 4])
def test_nan_learning_rate_is_blamed_on_its_own_level(check_every):
    e, _, lower = pair(lower_lr=math.nan, check_finite_every=check_every, steps=4)
    with pytest.raises(mlo.NonFiniteError, match=r"problem 'lower'.*learning rate is nan"):
        e.run()
    assert torch.isfinite(lower.module.x).all()  # refused before the step applied it


def test_a_step_that_makes_parameters_non_finite_is_blamed_on_that_level():
    class Explodes(torch.optim.SGD):
        def step(self, closure=None):
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(math.inf)

    um, lm = Scalar(1.0), Scalar(0.0)
    upper = Top("upper", um, torch.optim.SGD(um.parameters(), lr=0.1))
    lower = Reads("lower", lm, Explodes(lm.parameters(), lr=0.1))
    e = engine([upper, lower], {"upper": ["lower"]}, steps=3, check_finite_every=3)
    with pytest.raises(
        mlo.NonFiniteError, match=r"problem 'lower' produced a non-finite parameter after its"
    ):
        e.run()


class ExplicitNaN(mlo.Problem):
    """An explicit level whose response is NaN on its second batch."""

    def training_step(self, batch):
        return 0.5 * ((self.module.x - self.upper.module.x) ** 2).sum()

    def best_response(self, batch):
        return [self.upper.module.x * batch]


def test_skip_mode_skips_a_non_finite_explicit_response():
    um, lm = Scalar(1.0), Scalar(0.0)
    upper = Top("upper", um, torch.optim.SGD(um.parameters(), lr=0.1))
    lower = ExplicitNaN(
        "lower", lm, None, data=[1.0, math.nan, 1.0], config=mlo.ProblemConfig(solver="explicit")
    )
    e = engine([upper, lower], {"upper": ["lower"]}, steps=3, on_nonfinite="skip")
    e.run()
    # The upper's hypergradient re-evaluates the response on the same NaN batch: skipped too.
    assert e.tick == 3 and e.skipped == {"upper": 1, "lower": 1}
    assert e.updates == {"upper": 2, "lower": 2}
    assert torch.isfinite(lm.x).all()


# ------------------------------------------------------------------ item 8: unroll, subset


def test_unroll_with_an_optimizer_over_a_subset_of_parameters_equals_autograd():
    """The optimizer holds only the first layer; the second stays put in the replay too."""
    torch.manual_seed(0)
    k = 3
    dtype = torch.float64
    batches = [(torch.randn(8, 3, dtype=dtype), torch.randn(8, 1, dtype=dtype)) for _ in range(4)]
    val = (torch.randn(16, 3, dtype=dtype), torch.randn(16, 1, dtype=dtype))
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    scale = Scalar(0.5)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}

    class Inner(mlo.Problem):
        def training_step(self, batch):
            x, y = batch
            return ((self.module(x * self.outer.module.x) - y) ** 2).mean()

    class Outer(mlo.Problem):
        def training_step(self, batch):
            x, y = batch
            return ((self.inner.module(x) - y) ** 2).mean()

    inner = Inner(
        "inner",
        net,
        torch.optim.SGD(net[0].parameters(), lr=0.1, momentum=0.5),
        data=batches,
        config=mlo.ProblemConfig(solver="unroll", unroll_steps=k),
    )
    outer = Outer("outer", scale, torch.optim.SGD(scale.parameters(), lr=0.0), data=[val])
    e = engine([outer, inner], {"outer": ["inner"]})
    e.step()
    got = e.hypergradient("outer")["x"]

    s = scale.x.detach().clone().requires_grad_(True)
    params = {n: v.clone().requires_grad_(n.startswith("0.")) for n, v in start.items()}
    buffers: dict[str, torch.Tensor] = {}
    for x, y in batches[:k]:
        loss = ((torch.func.functional_call(net, params, (x * s,)) - y) ** 2).mean()
        trained = [n for n in params if n.startswith("0.")]
        grads = torch.autograd.grad(loss, [params[n] for n in trained], create_graph=True)
        for n, g in zip(trained, grads):
            buffers[n] = g if n not in buffers else 0.5 * buffers[n] + g
            params[n] = params[n] - 0.1 * buffers[n]
    for n, p in net.named_parameters():
        assert torch.allclose(params[n].detach(), p.detach(), rtol=0, atol=1e-12), n
    x, y = val
    outer_loss = ((torch.func.functional_call(net, params, (x,)) - y) ** 2).mean()
    truth = torch.autograd.grad(outer_loss, s)
    assert float((got - truth[0]).norm() / truth[0].norm()) < 1e-10


# ------------------------------------------------------------------ item 9: silently accepted


class Detached(mlo.Problem):
    def training_step(self, batch):
        return (0.5 * (self.module.x - self.upper.module.x) ** 2).sum().detach()


class OtherLevelOnly(mlo.Problem):
    """Reads only the upper level's parameters: a loss with a graph, none of it its own."""

    def training_step(self, batch):
        return (self.upper.module.x**2).sum()


class ConstantWithGraph(mlo.Problem):
    def training_step(self, batch):
        return torch.ones((), dtype=torch.float64, requires_grad=True)


class IntegerLoss(mlo.Problem):
    def training_step(self, batch):
        return torch.tensor(3)


class ComplexLoss(mlo.Problem):
    def training_step(self, batch):
        return (self.module.x * (1 + 1j)).sum()


@pytest.mark.parametrize(
    "cls, message",
    [
        (Detached, r"'lower' returned a loss that does not depend on its parameters"),
        (OtherLevelOnly, r"'lower' returned a loss that depends on none of its own parameters"),
        (ConstantWithGraph, r"depends on none of its own parameters.*never train"),
        (IntegerLoss, r"'lower' returned a torch\.int64 tensor; it must return a real"),
        (ComplexLoss, r"complex128 tensor.*take \.real or \.abs\(\)"),
    ],
)
def test_a_loss_that_cannot_train_the_level_is_refused(cls, message):
    e, _, lower = pair(lower_cls=cls, preflight=False)
    before = lower.module.x.detach().clone()
    with pytest.raises(mlo.SetupError, match=message):
        e.step()
    assert torch.equal(before, lower.module.x)


class Blind(mlo.Problem):
    """An upper level whose loss reads neither its own parameters nor its lower level."""

    def training_step(self, batch):
        return torch.ones((), dtype=torch.float64, requires_grad=True) * 2


def test_an_upper_level_that_reads_nothing_of_its_own_is_refused_naming_its_lowers():
    e, upper, _ = pair(upper_cls=Blind, preflight=False)
    before = upper.module.x.detach().clone()
    with pytest.raises(
        mlo.SetupError, match=r"'upper'.*not even through its lower levels \(lower\)"
    ):
        e.step()
    assert torch.equal(before, upper.module.x)


def test_a_scheduler_for_another_optimizer_is_refused():
    a, b = Scalar(), Scalar()
    other = torch.optim.SGD(b.parameters(), lr=1.0)
    with pytest.raises(mlo.SetupError, match="scheduler was built for another optimizer"):
        mlo.Problem(
            "p",
            a,
            torch.optim.SGD(a.parameters(), lr=1.0),
            scheduler=torch.optim.lr_scheduler.StepLR(other, 1),
        )


def test_a_scheduler_that_is_a_string_is_refused_before_any_step():
    a = Scalar()
    with pytest.raises(mlo.SetupError, match=r"scheduler must be a learning-rate scheduler.*str"):
        mlo.Problem("p", a, torch.optim.SGD(a.parameters(), lr=1.0), scheduler="cosine")


def test_two_problems_sharing_a_module_are_refused():
    shared = Scalar()
    a = Top("upper", shared, torch.optim.SGD(shared.parameters(), lr=0.1))
    b = Reads("lower", shared, torch.optim.SGD(shared.parameters(), lr=0.1))
    with pytest.raises(mlo.SetupError, match=r"'upper' and 'lower' both train the parameter 'x'"):
        engine([a, b], {"upper": ["lower"]})


@pytest.mark.parametrize("name", ["class", "lambda", "None"])
def test_a_keyword_problem_name_is_refused(name):
    m = Scalar()
    with pytest.raises(mlo.SetupError, match="not a keyword"):
        mlo.Problem(name, m, torch.optim.SGD(m.parameters(), lr=1.0))


@pytest.mark.parametrize("name", ["module", "config", "optimizer", "stream"])
def test_a_problem_name_that_is_an_instance_attribute_is_refused(name):
    with pytest.raises(mlo.SetupError, match=rf"\['{name}'\] clash with attributes"):
        engine([problem("a"), problem(name, parents=("a",))], {"a": [name]})


# ------------------------------------------------------------------ item 11: API messages


def test_dependencies_with_a_number_for_the_lowers():
    with pytest.raises(mlo.SetupError, match=r"dependencies\['a'\] must be a list.*got int 3"):
        engine([problem("a"), problem("b")], {"a": 3})


def test_dependencies_given_as_a_list():
    with pytest.raises(mlo.SetupError, match=r"must be a dict \{upper: \[lowers\]\}, got list"):
        engine([problem("a"), problem("b")], [("a", "b")])


def test_lbfgs_is_refused_with_the_reason():
    m = Scalar()
    with pytest.raises(mlo.SetupError, match=r"LBFGS is not supported\. It needs a closure"):
        mlo.Problem("p", m, torch.optim.LBFGS(m.parameters()))


class Classifier(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.module(x), y)


def test_a_later_batch_with_the_wrong_shape_names_the_problem_and_the_step():
    net = nn.Linear(4, 3)
    data = [(torch.randn(2, 4), torch.tensor([0, 1])), (torch.randn(2, 5), torch.tensor([0, 1]))]
    p = Classifier("classifier", net, torch.optim.SGD(net.parameters(), lr=0.1), data=data)
    e = engine([p], {}, steps=3)
    with pytest.raises(
        mlo.LevelError,
        match=r"problem 'classifier': Classifier.training_step failed at step 2 on a batch "
        r"that is \(a tensor of shape \(2, 5\).*mat1 and mat2",
    ):
        e.run()
    assert e.tick == 1


def test_labels_out_of_range_fail_before_training_naming_the_problem():
    net = nn.Linear(4, 3)
    data = [(torch.randn(2, 4), torch.tensor([0, 7]))]
    p = Classifier("classifier", net, torch.optim.SGD(net.parameters(), lr=0.1), data=data)
    before = net.weight.detach().clone()
    with pytest.raises(
        mlo.LevelError,
        match=r"problem 'classifier' fails on its first batch.*IndexError: Target 7 is out",
    ):
        engine([p], {}, steps=1).run()
    assert torch.equal(before, net.weight)


def test_a_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "ckpt").write_text("not a folder")
    with pytest.raises(mlo.SetupError, match=r"checkpoint_dir .*ckpt is a file, not a folder"):
        engine([problem("a")], {}, checkpoint_every=1, checkpoint_dir=tmp_path / "ckpt", steps=1)
    assert (tmp_path / "ckpt").read_text() == "not a folder"


def test_every_user_mistake_is_an_mlo_error():
    for cls in (
        mlo.SetupError,
        mlo.GraphError,
        mlo.DataError,
        mlo.LevelError,
        mlo.CheckpointError,
        mlo.NonFiniteError,
    ):
        assert issubclass(cls, mlo.MLOError)
    assert issubclass(mlo.SetupError, ValueError) and issubclass(mlo.SetupError, TypeError)


def test_a_non_finite_value_among_several_tensors_is_reported_with_its_value():
    """The check of a level's parameters covers several tensors at once; the message
    shows the first non-finite entry."""

    class Breaks(torch.optim.SGD):
        def step(self, closure=None):
            with torch.no_grad():
                self.param_groups[0]["params"][-1].fill_(-math.inf)

    class Fit(mlo.Problem):
        def training_step(self, batch):
            return self.module(torch.ones(1, 2)).pow(2).sum()

    net = nn.Linear(2, 1)
    p = Fit("fit", net, Breaks(net.parameters(), lr=0.1))
    with pytest.raises(
        mlo.NonFiniteError,
        match=r"'fit' produced a non-finite parameter after its optimizer "
        r"step \(-inf\) at step 1",
    ):
        engine([p], {}, steps=2).run()


def test_finite_values_whose_norms_overflow_when_summed_pass_the_check():
    """The check sums the tensors' entries; a sum that overflows (float32: two entries of
    2e38) is looked into value by value, and finite values pass."""

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.tensor([2e38]))
            self.b = nn.Parameter(torch.tensor([2e38]))

    class Flat(mlo.Problem):
        def training_step(self, batch):
            return (self.module.a * 0.0).sum() + (self.module.b * 0.0).sum()

    module = Pair()
    e = engine([Flat("flat", module, torch.optim.SGD(module.parameters(), lr=0.1))], {}, steps=3)
    e.run()  # loss 0, gradients 0, parameters 2e38: all finite
    assert e.tick == 3 and float(module.a.detach()) == float(torch.tensor(2e38))
    assert not math.isfinite(float(torch.stack([module.a[0], module.b[0]]).sum().detach()))


class Greedy(mlo.Problem):
    """Asks the allocator for more than the machine has (as an absurd size does)."""

    def training_step(self, batch):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
            "memory: you tried to allocate 400000000000 bytes."
        )


def test_running_out_of_memory_is_said_so_not_blamed_on_the_data():
    e, _, _ = pair(lower_cls=Greedy, preflight=False)
    with pytest.raises(mlo.OutOfMemoryError, match=r"'lower' ran out of memory at step 1") as info:
        e.step()
    assert "400000000000 bytes" in str(info.value) and "smaller" in str(info.value)
    assert "fits its model" not in str(info.value)
    assert isinstance(info.value, MemoryError)
