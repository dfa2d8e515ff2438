"""Vector algebra on parameter lists.

A "vector" in a hypergradient solver is a list of tensors shaped like a problem's
parameters. Every scalar reduction a solver makes (dot products, norms) goes through
``reduce_sum``, the single place where a distributed run would all-reduce across
ranks. Nothing here synchronises with the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Vector = list[Tensor]


def reduce_sum(partial: Tensor) -> Tensor:
    """Sum a locally computed scalar over all ranks (identity on a single process)."""
    return partial


def dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """``sum_i <x_i, y_i>`` as a 0-dim tensor."""
    if not xs:
        raise ValueError("dot() of empty vectors")
    if len(xs) == 1:  # one tensor: no stack and sum around the one product
        x, y = xs[0], ys[0]
        if x.dim() != 1:
            x, y = x.reshape(-1), y.reshape(-1)
        return reduce_sum(torch.vdot(x, y))
    total = torch.stack([torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]).sum()
    return reduce_sum(total)


def norm(xs: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of the concatenated vector, as a 0-dim tensor."""
    return dot(xs, xs).sqrt()


def axpy(alpha: Tensor | float, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Vector:
    """``alpha * x + y``, returning new tensors."""
    if isinstance(alpha, (int, float)):
        if len(xs) == 1:
            return [torch.add(ys[0], xs[0], alpha=alpha)]
        return list(torch._foreach_add(list(ys), list(xs), alpha=alpha))
    if alpha.requires_grad:  # differentiated again (nested levels): plain ops, whose
        return [y + alpha * x for x, y in zip(xs, ys)]  # double backward torch supports
    if len(xs) == 1:  # one fused operation (a list of one pays foreach's overhead twice)
        return [torch.addcmul(ys[0], xs[0], alpha)]
    return list(torch._foreach_add(list(ys), torch._foreach_mul(list(xs), alpha)))


def axmy(alpha: Tensor, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Vector:
    """``y − alpha * x`` for a 0-dim tensor ``alpha``, returning new tensors (one fused
    operation for one tensor, where ``axpy`` with ``-alpha`` would take two)."""
    if len(xs) == 1 and not alpha.requires_grad:
        return [torch.addcmul(ys[0], xs[0], alpha, value=-1)]
    return axpy(-alpha, xs, ys)


def scale(alpha: Tensor | float, xs: Sequence[Tensor]) -> Vector:
    """``alpha * x``, returning new tensors."""
    if len(xs) == 1 or (isinstance(alpha, Tensor) and alpha.requires_grad):
        return [alpha * x for x in xs]
    return list(torch._foreach_mul(list(xs), alpha))


def add(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Vector:
    """``x + y``, returning new tensors."""
    if len(xs) == 1:
        return [xs[0] + ys[0]]
    return list(torch._foreach_add(list(xs), list(ys)))


def sub(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Vector:
    """``x − y``, returning new tensors."""
    if len(xs) == 1:
        return [xs[0] - ys[0]]
    return list(torch._foreach_sub(list(xs), list(ys)))


def zeros_like(xs: Sequence[Tensor]) -> Vector:
    return [torch.zeros_like(x) for x in xs]


def detached(xs: Sequence[Tensor]) -> Vector:
    return [x.detach() for x in xs]
