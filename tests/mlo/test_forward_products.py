"""Second-order products that keep no graph between products, by forward-over-reverse
(``ProblemConfig(hvp="forward")``, issue 32) and by reverse mode from a graph built for
each (``hvp="recompute"``), against the retained graph's, in float64: the same
Hessian-vector and mixed products, the same hypergradients through cg and neumann, the
same dropout masks, what a product holds, and a clear error where an operation has no
forward-mode rule; and ``hvp="auto"``'s move to products from a graph built for each when
reverse mode runs out of memory."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import mlo
from mlo.autodiff import SecondOrder
from mlo.autodiff.forward import ForwardSecondOrder
from mlo.autodiff.recompute import RecomputedSecondOrder
from mlo.parameters import ParameterSet

from ..scripts import run_child

DTYPE = torch.float64


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 1)).to(DTYPE)
    return net, torch.randn(20, 6, dtype=DTYPE), torch.randn(20, dtype=DTYPE)


def recomputed_with_forward_mixed(objective, params, **kwargs):
    """Recompute's products as the solvers make them: mixed products forward-over-reverse."""
    return RecomputedSecondOrder(objective, params, forward_objective=objective, **kwargs)


@pytest.mark.parametrize(
    "products", [ForwardSecondOrder, RecomputedSecondOrder, recomputed_with_forward_mixed]
)
def test_products_equal_the_reverse_ones(products):
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
    forward = products(objective, params.tensors)
    for _ in range(2):  # nothing is kept from one product to the next
        for a, b in zip(forward.hvp(v), reverse.hvp(v)):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert float(sum(h.abs().sum() for h in reverse.hvp(v))) > 1e-3
    (mixed_f,) = forward.mixed(v, [scale])
    (mixed_r,) = reverse.mixed(v, [scale])
    assert torch.allclose(mixed_f, mixed_r, rtol=1e-12, atol=1e-14)
    assert float(mixed_r.abs()) > 1e-6
    # the products differentiate detached copies: nothing lands on the parameters
    assert all(p.grad is None for p in params.tensors) and scale.grad is None


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


@pytest.mark.parametrize("hvp", ["forward", "recompute"])
@pytest.mark.parametrize("solver", ["cg", "neumann"])
def test_the_hypergradient_is_the_same_through_cg_and_neumann(solver, hvp):
    reverse, forward = two_levels(solver, "reverse"), two_levels(solver, hvp)
    for _ in range(3):
        reverse.step()
    forward.load_state_dict(reverse.state_dict())  # the same state, trained a little
    a, b = forward.hypergradient("penalty")["lam"], reverse.hypergradient("penalty")["lam"]
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    assert float(b.abs()) > 1e-6
    assert f"hvp={hvp}" in forward.describe() and f"hvp={hvp}" not in reverse.describe()


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


def dropout_levels(hvp: str, fuse_mixed: bool = True) -> mlo.Engine:
    """``two_levels`` with dropout in the lower level's network: its products must all
    see the mask of the one evaluation a retained graph would have."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Dropout(0.3), nn.Linear(9, 1))
    net = net.to(DTYPE)
    x, y = torch.randn(20, 6, dtype=DTYPE), torch.randn(20, dtype=DTYPE)

    class Fit(mlo.Problem):
        def training_step(self, batch):
            scale = self.penalty.module.lam.exp()
            return scale * ((self.module(x[:12]).squeeze(1) - y[:12]) ** 2).mean()

    class Penalty(mlo.Problem):
        def training_step(self, batch):
            return ((self.fit.module(x[12:]).squeeze(1) - y[12:]) ** 2).mean()

    lam = nn.ParameterDict({"lam": nn.Parameter(torch.tensor(-1.0, dtype=DTYPE))})
    solver = mlo.solvers.CG(iterations=4, fuse_mixed=fuse_mixed)
    config = mlo.ProblemConfig(solver=solver, hvp=hvp)
    fit = Fit("fit", net, torch.optim.SGD(net.parameters(), lr=0.05), config=config)
    penalty = Penalty("penalty", lam, torch.optim.SGD(lam.parameters(), lr=0.1))
    return mlo.Engine([penalty, fit], {"penalty": ["fit"]}, mlo.EngineConfig(progress=False))


@pytest.mark.parametrize("mode", ["forward", "recompute"])
def test_every_product_sees_the_same_dropout_mask_and_the_same_numbers_are_drawn(mode):
    results = {}
    for hvp in ("reverse", mode):
        engine = dropout_levels(hvp)
        torch.manual_seed(5)
        for _ in range(3):
            engine.step()
        results[hvp] = (engine.problems["penalty"].module.lam.detach().clone(), torch.rand(3))
    (lam_r, next_r), (lam_f, next_f) = results["reverse"], results[mode]
    assert torch.allclose(lam_f, lam_r, rtol=1e-12, atol=0)
    assert float((lam_r + 1.0).abs()) > 1e-4  # the hypergradient moved it
    assert torch.equal(next_f, next_r)  # the forward products consumed what reverse did


def test_fused_mixed_products_give_the_mixed_product_of_w_through_dropout():
    # CG(4) on 73 parameters, truncated; each reverse-mode product in one pass with its
    # mixed part, or the mixed product of w after the loop (the definition): one number.
    found = {}
    for fuse in (True, False):
        engine = dropout_levels("reverse", fuse)
        torch.manual_seed(5)
        found[fuse] = engine.hypergradient("penalty")["lam"]
    assert float(found[False].abs()) > 1e-4
    assert torch.allclose(found[True], found[False], rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["forward", "recompute"])
def test_only_what_a_product_differentiates_requires_gradients_while_it_is_evaluated(mode):
    engine = dropout_levels(mode)
    lam = engine.problems["penalty"].module.lam
    fit = engine.problems["fit"]
    seen = []
    step = type(fit).training_step

    def watched(self, batch):
        seen.append(lam.requires_grad)
        return step(self, batch)

    type(fit).training_step = watched
    try:
        engine.hypergradient("penalty")
    finally:
        type(fit).training_step = step
    # the CG's Hessian-vector products hold lam; the last, mixed, product differentiates
    # it. Forward mode evaluates f for each product; recompute once for all Hessian-vector
    # products (their forward's graph is kept) and once for the mixed product.
    expected = [False] * 4 + [True] if mode == "forward" else [False, True]
    assert seen[-len(expected) :] == expected, seen
    assert lam.requires_grad


class Mixing(nn.Module):
    """Convolutions with batch norm whose outputs an architecture weight mixes, as on a
    DARTS edge."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
            for _ in range(4)
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x, weights):
        for _ in range(3):
            x = sum(w * op(x) for w, op in zip(weights, self.ops))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(
    "products", [ForwardSecondOrder, RecomputedSecondOrder, recomputed_with_forward_mixed]
)
def test_a_product_holds_about_twice_a_training_step(products):
    from ..scripts import ROOT, load_script

    live_peak = load_script(ROOT / "benchmarks" / "memory.py")._live_peak
    m = mixing()
    objective, params, alpha, v = m.objective, m.params, m.alpha, m.v

    def plain():  # a training step, the architecture held
        loss = nn.functional.cross_entropy(m.net(m.x, alpha.detach().softmax(0)), m.y)
        torch.autograd.grad(loss, params.tensors)

    def both():  # a step that differentiates the architecture too
        torch.autograd.grad(objective(params.tensors), [*params.tensors, alpha])

    held = products(objective, params.tensors, hold=m.hold)
    unheld = products(objective, params.tensors)
    step, step_both = live_peak(plain), live_peak(both)
    hvp = live_peak(lambda: [held.hvp(v) for _ in range(3)])
    mixed = live_peak(lambda: held.mixed(v, [alpha]))
    # forward mode: the saved activations and their tangents; a graph built for each
    # product: the saved activations and, at any time, about one more set (the first
    # backward's saved tensors, freed by the double backward as it goes, or the
    # gradients it gathers). Each product is about two steps that differentiate what it
    # differentiates.
    assert hvp < 2.2 * step and mixed < 2.2 * step_both, (step, step_both, hvp, mixed)
    # without holding the architecture its mixed outputs are saved as well
    assert live_peak(lambda: unheld.hvp(v)) > 1.15 * hvp

    def retained():  # the graph built once and kept for three products
        kept = SecondOrder(objective(params.tensors), params.tensors)
        for _ in range(3):
            kept.hvp(v)

    reverse = live_peak(retained)
    assert reverse > 1.15 * hvp, (reverse, hvp)


def mixing() -> SimpleNamespace:
    """``Mixing`` seeded, its architecture weights ``alpha``, a batch, the objective by
    the network's parameters (``params``), a ``hold`` for the weights and a vector:
    what the memory tests measure."""
    torch.manual_seed(0)
    net, alpha = Mixing(), torch.zeros(4, requires_grad=True)
    x, y = torch.randn(16, 8, 16, 16), torch.randint(0, 3, (16,))
    params = ParameterSet(net)

    def objective(values):
        with params.substitute(values):
            return nn.functional.cross_entropy(net(x, alpha.softmax(0)), y)

    def hold(keep):
        return Held([alpha], keep)

    v = [torch.randn_like(p) for p in params.tensors]
    return SimpleNamespace(**locals())


class Held:
    """``Evaluator.held`` for tensors outside an engine."""

    def __init__(self, tensors, keep):
        self.tensors = [t for t in tensors if all(t is not k for k in keep)]

    def __enter__(self):
        for t in self.tensors:
            t.requires_grad_(False)

    def __exit__(self, *exc):
        for t in self.tensors:
            t.requires_grad_(True)


def run_out_of_memory_in_reverse(monkeypatch, calls: list) -> None:
    """Reverse mode's Hessian-vector products fail as a GPU out of memory fails."""

    def refuse(self, *args):
        calls.append("reverse")
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SecondOrder, "hvp", refuse)
    monkeypatch.setattr(SecondOrder, "hvp_and_mixed", refuse)  # CG's fused products


def test_auto_takes_the_solve_again_with_a_graph_per_product_when_reverse_runs_out_of_memory(
    monkeypatch, caplog
):
    truth = dropout_levels("reverse")  # the same random state, reverse mode throughout
    torch.manual_seed(5)
    truth.step()
    auto = dropout_levels("auto")
    assert "hvp=auto(reverse)" in auto.describe()
    calls: list = []
    run_out_of_memory_in_reverse(monkeypatch, calls)
    torch.manual_seed(5)
    with caplog.at_level("WARNING", logger="mlo"):
        auto.step()
    assert calls == ["reverse"]  # one failed attempt, then a graph per product
    assert "ran out of memory in reverse mode" in caplog.text and "'fit'" in caplog.text
    lam_truth = truth.problems["penalty"].module.lam.detach()
    lam_auto = auto.problems["penalty"].module.lam.detach()
    assert torch.allclose(lam_auto, lam_truth, rtol=1e-12, atol=0)
    assert float((lam_truth + 1.0).abs()) > 1e-4
    auto.step()
    assert calls == ["reverse"]  # the level keeps it
    assert "hvp=auto(recompute, since reverse ran out of memory)" in auto.describe()


def test_a_level_set_to_reverse_is_not_switched(monkeypatch):
    engine = dropout_levels("reverse")
    run_out_of_memory_in_reverse(monkeypatch, [])
    with pytest.raises(torch.OutOfMemoryError):
        engine.step()


def test_other_errors_are_not_taken_for_memory(monkeypatch):
    engine = dropout_levels("auto")

    def broken(self, *args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(SecondOrder, "hvp", broken)
    monkeypatch.setattr(SecondOrder, "hvp_and_mixed", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        engine.step()
    assert "hvp=auto(reverse)" in engine.describe()


def test_out_of_memory_in_both_modes_names_both_failures(monkeypatch):
    from mlo.autodiff.recompute import RecomputedSecondOrder

    engine = dropout_levels("auto")
    run_out_of_memory_in_reverse(monkeypatch, [])

    def refuse(self, *args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(RecomputedSecondOrder, "_product", refuse)
    with pytest.raises(
        mlo.OutOfMemoryError, match=r"'fit'.*reverse mode.*2.00 GiB.*each product.*1.00 GiB"
    ):
        engine.step()


def test_no_switch_on_several_ranks():
    """One rank starting its solve again would pair its collective calls with the other
    ranks' later ones, so under data parallelism the error stands."""
    from mlo.hypergradient.hvp import HvpModes

    engine = dropout_levels("auto")
    evaluator = engine.hypergradients.evaluator
    level = engine.hypergradients.level("fit", ["penalty"])

    class Refusing(mlo.solvers.CG):
        def vjp(self, level, v, parents):
            raise torch.OutOfMemoryError("CUDA out of memory")

    modes = HvpModes(evaluator, {})
    evaluator.reducer = object()  # as if on several ranks
    with pytest.raises(torch.OutOfMemoryError):
        modes.vjp(Refusing(), level, [], [])
    assert modes.switched == {}


def test_a_forward_rule_that_fails_in_torch_is_named_as_one():
    """F.mse_loss's backward writes into the target's zero tangent in forward mode (torch
    2.14): the level and the way out are named, not PyTorch's internal error."""
    engine = dropout_levels("forward")
    fit = engine.problems["fit"]
    x, y = torch.randn(12, 6, dtype=DTYPE), torch.randn(12, dtype=DTYPE)

    def mse(self, batch):
        scale = self.penalty.module.lam.exp()
        return scale * nn.functional.mse_loss(self.module(x).squeeze(1), y)

    type(fit).training_step = mse
    with pytest.raises(mlo.SetupError, match=r"level 'fit'.*none or fails.*hvp='reverse'"):
        engine.hypergradient("penalty")


def test_held_restores_every_parameter_even_after_an_error_and_leaves_others_alone():
    engine = dropout_levels("forward")
    evaluator = engine.hypergradients.evaluator
    lam = engine.problems["penalty"].module.lam
    fit = list(engine.problems["fit"].module.parameters())
    frozen = fit[-1]
    frozen.requires_grad_(False)  # a frozen parameter stays frozen
    with pytest.raises(RuntimeError, match="inside"), evaluator.held([lam]):
        assert lam.requires_grad and not any(p.requires_grad for p in fit)
        raise RuntimeError("inside")
    assert lam.requires_grad and all(p.requires_grad for p in fit[:-1])
    assert not frozen.requires_grad


def test_the_first_forward_product_of_a_process_warns_about_nothing_of_torchs_own():
    # torch 2.14's first make_dual in a process loads its forward-mode decompositions
    # through torch.jit.script, which warns that torch.jit.script is deprecated: torch's
    # own use, nothing mlo's user can change. A fresh process, warnings as errors.
    program = (
        "import torch, mlo\n"
        "from mlo.autodiff.forward import ForwardSecondOrder\n"
        "w = torch.randn(3, dtype=torch.float64, requires_grad=True)\n"
        "def f(values=None):\n"
        "    x = w if values is None else values[0]\n"
        "    return (x.sin() * x).sum()\n"
        "(h,) = ForwardSecondOrder(f, [w]).hvp([torch.ones(3, dtype=torch.float64)])\n"
        "expected = 2 * w.cos() - w * w.sin()\n"
        "assert torch.allclose(h, expected.detach(), rtol=1e-12), (h, expected)\n"
    )
    done = run_child([sys.executable, "-W", "error", "-c", program], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_forward_mode_evaluation_lets_go_of_the_graph_of_its_tangents(monkeypatch):
    """What an operation saves is held detached, its tangent cut: saved as it is, an
    output keeps its uncut tangent and the graph that computed it. Same values to the
    bit, less memory, measured on a mixed product (where the tangents depend on the
    architecture, so that graph exists)."""
    import contextlib

    import mlo.autodiff.forward as forward_mode

    from ..scripts import ROOT, load_script

    live_peak = load_script(ROOT / "benchmarks" / "memory.py")._live_peak
    m = mixing()

    def mixed():
        return forward_mode.forward_product(m.objective, m.params.tensors, m.v, [m.alpha], m.hold)

    cut, cut_peak = mixed(), live_peak(mixed)
    monkeypatch.setattr(forward_mode, "_saved_detached", contextlib.nullcontext)
    kept, kept_peak = mixed(), live_peak(mixed)
    assert torch.equal(cut[0], kept[0]) and float(cut[0].abs().max()) > 1e-4
    assert cut_peak < 0.9 * kept_peak, (cut_peak, kept_peak)  # 0.81x measured


def test_recompute_takes_its_mixed_products_forward_over_reverse_which_holds_less():
    from ..scripts import ROOT, load_script

    live_peak = load_script(ROOT / "benchmarks" / "memory.py")._live_peak
    m = mixing()
    forward = recomputed_with_forward_mixed(m.objective, m.params.tensors, hold=m.hold)
    reverse = RecomputedSecondOrder(m.objective, m.params.tensors, hold=m.hold)
    v, alpha = m.v, m.alpha
    (a,), (b,) = forward.mixed(v, [alpha]), reverse.mixed(v, [alpha])
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)  # float32; float64 above
    found = {m: live_peak(lambda m=m: m.mixed(v, [alpha])) for m in (forward, reverse)}
    assert found[forward] < 0.95 * found[reverse], found  # 0.90x measured
    assert not forward.memo  # nothing failed
