"""mlo.autodiff.vjp: autograd's engine called directly is torch.autograd.grad."""

from __future__ import annotations

import pytest
import torch

from mlo.autodiff import vjp


def test_vjp_is_autograd_grad_with_unused_inputs_and_second_derivatives():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    loss = (x.sin() * y).sum() + (x * x).sum()
    ours = vjp([loss], [x, y, unused], retain_graph=True, create_graph=True)
    theirs = torch.autograd.grad(loss, [x, y, unused], allow_unused=True, create_graph=True)
    assert ours[2] is None and theirs[2] is None
    for a, b in zip(ours[:2], theirs[:2]):
        assert torch.equal(a, b)
    # Differentiable: a Hessian-vector product through the first derivative.
    v = torch.randn(5, generator=gen, dtype=torch.float64)
    (hv,) = vjp([ours[0]], [x], [v])
    exact = (-x.sin() * y + 2).detach() * v  # d²/dx² of sin(x)·y + x², diagonal
    assert torch.allclose(hv, exact, rtol=1e-14, atol=0)


def test_vjp_of_tensor_subclasses_goes_through_autograd_grad():
    class Tagged(torch.Tensor):
        pass

    x = torch.randn(4, dtype=torch.float64).as_subclass(Tagged).requires_grad_()
    (g,) = vjp([(x * x).sum()], [x])
    assert torch.allclose(g.as_subclass(torch.Tensor), 2 * x.detach().as_subclass(torch.Tensor))


def test_operation_cost_counts_products_by_their_flops_and_other_operations_by_elements():
    from mlo.autodiff.op_cost import OperationCost

    a, b, x = torch.randn(5, 7), torch.randn(7, 3), torch.randn(7)
    with OperationCost() as cost:
        a @ b  # 2·5·7·3
    assert cost.total == 2 * 5 * 7 * 3
    with OperationCost() as cost:
        a @ x  # a matrix-vector product: 2·5·7
    assert cost.total == 2 * 5 * 7
    with OperationCost() as cost:
        (x * 2.0).exp()  # two elementwise operations of 7 elements
    assert cost.total == 14


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_a_convolution_backward_costs_its_forward_per_gradient(groups):
    """torch's flop formula for convolution_backward leaves out the groups (a depthwise
    layer's backward counted 2.5x its two convolutions); op_cost counts each gradient as
    the forward convolution: 2 per output element and weight entry of its group."""
    from mlo.autodiff.op_cost import OperationCost

    x = torch.randn(2, 6, 5, 5)
    w = torch.randn(6, 6 // groups, 3, 3, requires_grad=True)
    y = torch.nn.functional.conv2d(x.requires_grad_(), w, padding=1, groups=groups)
    forward = 2 * y.numel() * (6 // groups) * 9
    for inputs, passes in (([x, w], 2), ([w], 1)):
        grad = torch.ones_like(y)
        with OperationCost() as cost:
            torch.autograd.grad(y, inputs, grad, retain_graph=True)
        assert cost.total == passes * forward
