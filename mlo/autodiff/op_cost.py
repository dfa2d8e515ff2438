"""A rough cost of the operations a block of code runs, from their shapes alone (no host
synchronisation): the floating-point operations of matrix products and convolutions
(``torch.utils.flop_counter``'s formulas), ``2mn`` for a matrix-vector and ``2n`` for a
vector-vector product, and one per output element for every other operation (the
elementwise work a memory-bound operation does). Good enough to compare two ways of
taking the same products (``cg``'s ``fuse_mixed="auto"``); not a time."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten
_VECTOR = {_aten.mv, _aten.addmv, _aten.dot, _aten.vdot}


class OperationCost(TorchDispatchMode):
    """``with OperationCost() as cost: ...``; then ``cost.total``."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self._formulas = FlopCounterMode(display=False).flop_registry

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet is _aten.convolution_backward:
            self.total += _convolution_backward(*args)
        elif packet in self._formulas:
            self.total += int(self._formulas[packet](*args, **kwargs, out_val=out))
        elif packet in _VECTOR:
            matrix = next(t for t in tree_leaves(args) if isinstance(t, torch.Tensor))
            self.total += 2 * matrix.numel()
        else:
            self.total += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def _convolution_backward(grad_out, x, weight, bias_sizes, *rest) -> int:
    """A convolution backward's floating-point operations: each gradient it computes (by
    the input, by the weight) costs what the forward convolution did, ``2`` for each
    output element and each weight entry of its group; the bias's, one per output
    element. (torch's formula leaves the groups out, so it counts a depthwise layer's as
    a dense one's.)"""
    mask = rest[-1]
    forward = 2 * grad_out.numel() * weight[0].numel()
    return forward * (int(mask[0]) + int(mask[1])) + grad_out.numel() * int(mask[2])
