"""Data-parallel multilevel training on ``torch.distributed``.

Under ``torchrun --nproc_per_node N`` (or any initialised default process group) with
``EngineConfig(distributed="ddp")``, every rank holds all levels' parameters, reads its own
shard of each level's data, and the engine keeps the ranks identical:

- every vector computed from a level's objective on local data (a gradient, a
  Hessian-vector or mixed product, a finite-difference gradient) is averaged across ranks
  at once (``Reducer.mean``), in one all-reduce per product; what solvers compute from
  averaged vectors (CG's dot products, Neumann's norms, darts' step ε/‖v‖) is then the same
  on every rank without further communication;
- finiteness checks are agreed (one all-reduce of the flags): every rank raises, or skips,
  together;
- buffers (BatchNorm's running statistics, which each rank updates from its own batch)
  are set to rank 0's after every tick, as PyTorch's DDP does before each forward.

With each rank's per-level batch a mean over B examples and the shards of
``mlo.durable.sampling.resumable_loader``, one tick on N ranks computes the update of one
process with batch N·B (exactly, up to the order of floating-point sums) for levels
without batch-coupled layers; BatchNorm normalises over each rank's B examples, as in
PyTorch's DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

# Imported now, before any process group exists: its functions' default ``group`` argument
# is read when the module is first imported, and mlo's later imports of FSDP pull it in.
# Imported after init_process_group, it would hold the group for the life of the process,
# so destroy_process_group() could not stop gloo's threads, and a rank could abort at exit
# ("terminate called without an active exception") after a run that succeeded.
import torch.distributed.nn.functional
from torch import Tensor

from ..errors import SetupError


def initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if initialized() else 1


class Reducer:
    """Averages and agrees across the ranks of the default process group."""

    def __init__(self) -> None:
        if not initialized():
            raise SetupError(
                "EngineConfig(distributed='ddp' or 'fsdp') needs a torch.distributed "
                "process group; "
                "start the script with torchrun --nproc_per_node N (which sets it up for "
                "mlo), or call torch.distributed.init_process_group first"
            )
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()

    def mean(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The average over ranks of each tensor (one all-reduce per dtype and device).

        Differentiable when a tensor requires grad (under grad mode): the derivative of
        the average is the average of the ranks' derivatives (see ``_Mean``), so that
        a computation differentiated through it, such as ``unroll``'s replay of steps
        taken with averaged gradients, gives on every rank a local share whose average
        over ranks is the derivative of the global computation."""
        tensors = list(tensors)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return list(_Mean.apply(self.world, *tensors))
        return _mean(tensors, self.world)

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite each tensor with rank 0's (one broadcast per dtype and device)."""
        tensors = list(tensors)
        for indices, flat in _flat_groups(tensors):
            dist.broadcast(flat, src=0)
            with torch.no_grad():
                for i, part in zip(indices, _unflatten(flat, [tensors[i] for i in indices])):
                    tensors[i].copy_(part)

    def barrier(self) -> None:
        dist.barrier()

    def gather(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (picklable), in rank order."""
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_true(self, flags: Tensor) -> Tensor:
        """Element-wise AND of a boolean vector across ranks (one all-reduce)."""
        values = flags.to(torch.int32)
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
        return values.bool()


def _mean(tensors: list[Tensor], world: int) -> list[Tensor]:
    out: list[Tensor] = [torch.empty(0)] * len(tensors)
    for indices, flat in _flat_groups(tensors):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        for i, part in zip(indices, _unflatten(flat, [tensors[i] for i in indices])):
            out[i] = part
    return out


class _Mean(torch.autograd.Function):
    """The average over ranks as an autograd operation.

    Seen as one computation spread over the ranks, ``m = (1/N) Σ_r x_r`` is held by every
    rank, so the adjoint that reaches ``x_r`` is the average of the adjoints the ranks
    hold for their copies of ``m``: the backward is the same average (it is self-adjoint),
    and applying this function again keeps higher derivatives available."""

    @staticmethod
    def forward(ctx: Any, world: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.world = world
        return tuple(_mean(list(tensors), world))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Any, ...]:
        grads = tuple(g.contiguous() for g in grads)
        if torch.is_grad_enabled() and any(g.requires_grad for g in grads):
            return (None, *_Mean.apply(ctx.world, *grads))
        return (None, *_mean(list(grads), ctx.world))


def _flat_groups(tensors: list[Tensor]) -> list[tuple[list[int], Tensor]]:
    """The tensors' positions and contents, concatenated, per dtype and device (one
    collective each)."""
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    return [
        (indices, torch.cat([tensors[i].detach().reshape(-1) for i in indices]))
        for indices in groups.values()
    ]


def _unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out
