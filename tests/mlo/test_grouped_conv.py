"""Grouped convolutions whose double backward takes each term in one call
(``mlo.autodiff.grouped_conv``): the same derivatives as PyTorch's, to rounding in
float64, for every geometry and every set of inputs that need a gradient; one call per
term, not one per group; and the solvers' products through it, against the products
without it."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mlo
from mlo.autodiff.grouped_conv import grouped_double_backward
from mlo.solvers import base

DTYPE = torch.float64

# (channels in, channels out, groups, kernel, stride, padding, dilation)
GEOMETRIES = [
    (6, 6, 6, 3, 1, 1, 1),  # depthwise 3x3, as in separable convolutions
    (6, 6, 6, 5, 1, 2, 1),
    (6, 6, 6, 3, 1, 2, 2),  # dilated, as in DARTS' dil_conv_3x3
    (6, 6, 6, 5, 1, 4, 2),
    (6, 6, 6, 3, 2, 1, 1),  # strided (a reduction cell's first)
    (6, 6, 6, 3, 1, 0, 1),  # no padding
    (6, 6, 6, 3, (2, 1), (1, 0), (1, 2)),  # a different stride, padding, dilation per side
    (4, 8, 4, 3, 1, 1, 1),  # a depthwise multiplier of 2
    (6, 9, 3, 3, 1, 1, 1),  # two input channels a group
]


def second_order(geometry, bias: bool, needs: str, mode, device="cpu") -> list[torch.Tensor]:
    """The gradient of ``Σ tanh(conv)²`` by the tensors in ``needs`` ("x", "w", "b") and
    its product with fixed vectors, the conv recorded under ``mode`` on ``device``."""
    c_in, c_out, groups, k, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, c_in, 9, 8, dtype=DTYPE, generator=gen)
    w = torch.randn(c_out, c_in // groups, k, k, dtype=DTYPE, generator=gen)
    b = torch.randn(c_out, dtype=DTYPE, generator=gen) if bias else None
    x, w = x.to(device), w.to(device)
    b = None if b is None else b.to(device)
    inputs = [t for name, t in (("x", x), ("w", w), ("b", b)) if name in needs and t is not None]
    for t in inputs:
        t.requires_grad_()
    vectors = [torch.randn(t.shape, dtype=DTYPE, generator=gen).to(device) for t in inputs]
    with mode():
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    first = torch.autograd.grad(y.tanh().pow(2).sum(), inputs, create_graph=True)
    second = torch.autograd.grad(first, inputs, vectors, allow_unused=True)
    second = [torch.zeros_like(t) if s is None else s for s, t in zip(second, inputs)]
    return [t.detach() for t in (*first, *second)]


@pytest.mark.parametrize("needs", ["xwb", "w", "x", "xw"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_derivatives_are_pytorchs(geometry, needs):
    bias = "b" in needs
    ours = second_order(geometry, bias, needs, grouped_double_backward)
    truth = second_order(geometry, bias, needs, nullcontext)
    assert len(ours) == len(truth) > 0
    for a, t in zip(ours, truth):
        assert torch.allclose(a, t, rtol=1e-12, atol=1e-12 * float(t.abs().max()))
    assert any(float(t.abs().max()) > 1e-3 for t in truth[len(truth) // 2 :])


class _Convolutions(TorchDispatchMode):
    """Counts the convolution kernels called (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", [grouped_double_backward, nullcontext])
def test_a_double_backward_is_one_call_per_term_not_per_group(mode):
    channels = 16
    x = torch.randn(2, channels, 8, 8, requires_grad=True)
    w = torch.randn(channels, 1, 3, 3, requires_grad=True)
    with mode():
        y = F.conv2d(x, w, None, 1, 2, 2, channels)
    grads = torch.autograd.grad(y.pow(2).sum(), [x, w], create_graph=True)
    with _Convolutions() as counted:
        torch.autograd.grad(grads, [x, w], [torch.ones_like(x), torch.ones_like(w)])
    if mode is grouped_double_backward:  # 2 by the output's gradient, 1 each by x and w,
        assert counted.calls <= 6  # and 2 for the forward's backward (by x and by w)
    else:  # PyTorch's routine takes the weight's term per group
        assert counted.calls > channels


def test_other_convolutions_are_pytorchs_own():
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    with grouped_double_backward():
        depthwise = F.conv2d(x, torch.randn(4, 1, 3, 3), padding=1, groups=4)
        dense = F.conv2d(x, torch.randn(5, 4, 3, 3), padding=1)
        named_padding = F.conv2d(x, torch.randn(4, 1, 3, 3), padding="same", groups=4)
        unbatched = F.conv2d(x[0], torch.randn(4, 1, 3, 3), padding=1, groups=4)
        constant = F.conv2d(x.detach(), torch.randn(4, 1, 3, 3), groups=4)
    assert type(depthwise.grad_fn).__name__ == "_GroupedConv2dBackward"
    for node in (dense.grad_fn, named_padding.grad_fn, unbatched.grad_fn.next_functions[0][0]):
        assert type(node).__name__ == "ConvolutionBackward0"  # (unbatched: then a squeeze)
    assert constant.grad_fn is None


def test_a_torch_func_transform_inside_the_objective_gets_pytorchs_convolution():
    """An objective may take per-sample values with vmap or an inner gradient with
    torch.func.grad (MAML-style); those transforms need rules these nodes do not define,
    so under them the convolution is PyTorch's, with PyTorch's values."""
    x = torch.randn(3, 2, 4, 6, 6, dtype=DTYPE)
    w = torch.randn(4, 1, 3, 3, dtype=DTYPE, requires_grad=True)

    def per_sample(xi):
        return F.conv2d(xi, w, padding=1, groups=4).pow(2).sum()

    def inner(weight):
        return F.conv2d(x[0], weight, padding=1, groups=4).pow(2).sum()

    found = {}
    for mode in (grouped_double_backward, nullcontext):
        with mode():
            values = torch.func.vmap(per_sample)(x)
            step = torch.func.grad(inner)(w)
        found[mode] = torch.autograd.grad((values.sum() + step.pow(2).sum()), w)[0]
    assert torch.allclose(found[grouped_double_backward], found[nullcontext], rtol=1e-12)


class _Features(nn.Module):
    """Depthwise-separable branches (plain, dilated, strided) mixed by weights."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(6, 6, k, stride, padding, dilation, groups=6, bias=False),
                nn.Conv2d(6, 6, 1),
                nn.Tanh(),
            )
            for k, stride, padding, dilation in ((3, 1, 1, 1), (3, 1, 2, 2), (5, 1, 2, 1))
        )
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.stem(x))
        h = sum(m * branch(h) for m, branch in zip(mix.softmax(0), self.branches))
        return self.head(h.mean((2, 3))).squeeze(1)


def _search(solver: str, hvp: str, unroll: int = 1) -> mlo.Engine:
    torch.manual_seed(0)
    net, mix = _Features().to(DTYPE), nn.ParameterDict({"a": nn.Parameter(torch.zeros(3))})
    mix = mix.to(DTYPE)
    x, y = torch.randn(16, 3, 8, 8, dtype=DTYPE), torch.randn(16, dtype=DTYPE)

    class Weights(mlo.Problem):
        def training_step(self, batch):
            out = self.module(x[:8], self.architecture.module["a"])
            return ((out - y[:8]) ** 2).mean()

    class Architecture(mlo.Problem):
        def training_step(self, batch):
            return ((self.weights.module(x[8:], self.module["a"]) - y[8:]) ** 2).mean()

    config = mlo.ProblemConfig(solver=solver, hvp=hvp, unroll_steps=unroll)
    weights = Weights("weights", net, torch.optim.SGD(net.parameters(), lr=0.05), config=config)
    arch = Architecture("architecture", mix, torch.optim.SGD(mix.parameters(), lr=0.1))
    return mlo.Engine(
        [arch, weights], {"architecture": ["weights"]}, mlo.EngineConfig(progress=False)
    )


class _PyTorchs(grouped_double_backward):
    """The context's interface, every convolution PyTorch's own."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("solver", "hvp", "unroll"),
    [
        (mlo.solvers.CG(iterations=3), "reverse", 1),
        ("neumann", "recompute", 1),
        ("unroll", "reverse", 3),
        (mlo.solvers.Unroll(checkpoint=True), "reverse", 3),
    ],
)
def test_the_solvers_hypergradients_are_those_without_it(monkeypatch, solver, hvp, unroll):
    """The engine evaluates a level's objective under the context for its products and
    for unroll's replay; the hypergradient is the one PyTorch's own double backward gives.
    (cg's default 10 iterations on this indefinite Hessian amplify the products' last-bit
    differences to 7e-8 relative; 3 iterations keep them at 4e-14.)"""
    ours, truth = _search(solver, hvp, unroll), _search(solver, hvp, unroll)
    for _ in range(3):
        ours.step()
    truth.load_state_dict(ours.state_dict())
    entered = []

    class Counted(grouped_double_backward):
        def __enter__(self):
            entered.append(self)
            return super().__enter__()

    monkeypatch.setattr(base, "grouped_double_backward", Counted)
    a = ours.hypergradient("architecture")["a"]
    assert entered  # the context was used
    monkeypatch.setattr(base, "grouped_double_backward", _PyTorchs)
    b = truth.hypergradient("architecture")["a"]
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-15) and float(b.abs().max()) > 1e-6


def test_a_level_without_grouped_convolutions_is_evaluated_plainly_after_the_first_time():
    """The context looks at every operation of the objective; a level that has no grouped
    convolution pays that once."""
    w = torch.randn(4, dtype=DTYPE, requires_grad=True)
    x = torch.randn(2, 4, 6, 6, dtype=DTYPE)
    entered = []

    class Counted(grouped_double_backward):
        def __enter__(self):
            entered.append(self)
            return super().__enter__()

    def dense(params=None, batch=None):
        return (w if params is None else params[0]).pow(3).sum()

    def depthwise(params=None, batch=None):
        kernel = (w if params is None else params[0]).view(4, 1, 1, 1)
        return F.conv2d(x, kernel, groups=4).pow(3).sum()

    original = base.grouped_double_backward
    base.grouped_double_backward = Counted
    try:
        for objective, times in ((dense, 1), (depthwise, 3)):
            entered.clear()
            level = base.Level("d", [w], objective, 0.1)
            for _ in range(3):
                level.twice_differentiable()
            assert len(entered) == times
    finally:
        base.grouped_double_backward = original


def test_a_graph_differentiated_further_is_pytorchs_own():
    """Where the products are differentiated in turn (a nested upper level), the level's
    objective is evaluated without the context."""
    x = torch.randn(2, 4, 6, 6, dtype=DTYPE)
    w = torch.randn(4, 1, 3, 3, dtype=DTYPE, requires_grad=True)

    def objective(params=None, batch=None):
        return F.conv2d(x, w if params is None else params[0], padding=1, groups=4).sum()

    for create_graph, node in ((False, "_GroupedConv2dBackward"), (True, "ConvolutionBackward0")):
        level = base.Level("d", [w], objective, 0.1, create_graph=create_graph)
        loss = level.twice_differentiable()
        assert type(loss.grad_fn.next_functions[0][0]).__name__ == node
