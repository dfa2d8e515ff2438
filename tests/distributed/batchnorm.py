"""A small convolutional network with batch norm, built identically on one process and on
the ranks of a data-parallel run; and one rank of the SyncBatchNorm test:
python -m torch.distributed.run --standalone --nproc_per_node N -m
tests.distributed.batchnorm OUT

Each rank converts the network with mlo.convert_sync_batchnorm, takes its contiguous share
of the global batch, and writes OUT/rank<r>.pt: its outputs, the gradient and a
Hessian-vector product of its loss averaged over ranks (as the engine averages them), the
running statistics after the step, its outputs in eval mode, and (rank 0) an
observation in training mode made on that rank alone."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

GLOBAL_BATCH = 8


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4, affine=False),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6),
        nn.BatchNorm1d(6, momentum=None),
    ).double()


def batch() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The global batch (shifted away from zero mean, so that the variance is not taken
    about the wrong centre unnoticed) and the direction of the Hessian-vector product."""
    gen = torch.Generator().manual_seed(1)
    x = 3.0 + torch.randn(GLOBAL_BATCH, 3, 5, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 6, (GLOBAL_BATCH,), generator=gen)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in network().parameters()]
    return x, y, v


def products(net: nn.Module, x, y, v) -> tuple[torch.Tensor, list, list]:
    """The outputs, the loss's gradient and its Hessian-vector product with ``v``."""
    params = list(net.parameters())
    out = net(x)
    grads = torch.autograd.grad(F.cross_entropy(out, y), params, create_graph=True)
    hvp = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, v)), params)
    return out.detach(), [g.detach() for g in grads], list(hvp)


def main() -> None:
    import mlo
    from mlo.parallel.distributed import Reducer

    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    net = mlo.convert_sync_batchnorm(network())
    x, y, v = batch()
    share = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    out, grads, hvp = products(net, x[share], y[share], v)
    reducer = Reducer()
    observed = None
    if rank == 0:  # an observation on one rank alone: it must not wait for the others
        with mlo.observing([net]):
            observed = net(x[share])
    result = {
        "observed": observed,
        "out": out,
        "grad": reducer.mean(grads),
        "hvp": reducer.mean(hvp),
        "running": {k: b.clone() for k, b in net.named_buffers()},
        "eval": net.eval()(x[share]).detach(),
    }
    torch.save(result, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
