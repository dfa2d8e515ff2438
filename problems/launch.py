"""Starting the examples under ``torchrun``: the process group, each rank's device, and
which rank writes.

``torchrun --nproc_per_node N script.py ...`` starts N copies with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous in the environment. ``start``
initialises the default process group from them (NCCL on GPUs, gloo on the CPU), and the
examples then train with ``EngineConfig(distributed="ddp")``: each rank reads its shard of
the data (``--batch-size`` is per rank) and rank 0 alone writes files and reports.
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch
import torch.distributed as dist

from mlo.parallel import distributed


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group when launched by torchrun; returns this rank's device (its
    own GPU, ``cuda:LOCAL_RANK``, for a CUDA run) and whether the run is distributed."""
    if not launched():
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        minutes = float(os.environ.get("MLO_DISTRIBUTED_TIMEOUT_MINUTES", "10"))
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=minutes),
        )
        # Shut the group down before the interpreter exits: a backend's threads still
        # running at exit can abort the process ("terminate called without an active
        # exception") after a run that otherwise succeeded.
        atexit.register(_shutdown)
    return device, True


def finish() -> None:
    """End a run launched by torchrun on every rank together: wait until all ranks get
    here (rank 0 may still be writing its files), then shut the process group down.
    Nothing happens without a process group. Call it only where every rank arrives; a
    failing rank exits without it (its group is shut down at exit)."""
    if dist.is_initialized():
        dist.barrier()
        _shutdown()


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def lead() -> bool:
    """Whether this rank writes files and reports (rank 0, or the only process); known
    from torchrun's environment before the process group exists."""
    if distributed.initialized():
        return distributed.rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def shard_batch(batch: object) -> object:
    """This rank's equal share of a whole-dataset batch (a tensor, or a tuple or list of
    them, split along the first dimension), the last ``n % world`` examples dropped so
    that the ranks' mean losses average to the global batch's."""
    world, rank = distributed.world_size(), distributed.rank()
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        per = len(batch) // world
        return batch[rank * per : (rank + 1) * per]
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_batch(part) for part in batch)
    raise TypeError(f"cannot shard a batch of {type(batch).__name__}")
