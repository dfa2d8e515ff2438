"""One rank of the data-parallel test: python -m torch.distributed.run --standalone
--nproc_per_node N -m tests.distributed.worker OUT TICKS SAVE_AT DTYPE

For every case of ``levels.CASES`` under distributed="ddp" and of ``levels.FSDP_CASES``
under "fsdp", in DTYPE (float64 or float32): per-rank batch 16/N, TICKS ticks, and each
rank's parameters after every tick in OUT/<case>-<dtype>[-fsdp].rank<r>.pt; in float64
also a checkpoint after SAVE_AT ticks (OUT/<case>-float64[-fsdp].pt, written by rank 0)
and, under "fsdp", each rank's shard sizes and its run resumed from that checkpoint (the
tests of checkpoints read these)."""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .levels import CASES, DTYPES, FSDP_CASES, parameters

GLOBAL_BATCH = 16


def build(case: str, mode: str):
    return (FSDP_CASES if mode == "fsdp" else CASES)[case]


def _shards(engine) -> dict[str, tuple[int, int, int]]:
    """Per optimizer parameter and momentum buffer: this rank's entries, the full count
    and the rows (what sharding saves)."""
    out = {}
    for name, problem in engine.problems.items():
        for group in problem.optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                out[f"{name}.{i}"] = (p.to_local().numel(), p.numel(), p.shape[0])
                buffer = problem.optimizer.state[p].get("momentum_buffer")
                if buffer is not None:
                    out[f"{name}.{i}.momentum"] = (
                        buffer.to_local().numel(),
                        buffer.numel(),
                        buffer.shape[0],
                    )
    return out


def main() -> None:
    out, ticks, save_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    dtype_name = sys.argv[4]
    dtype = DTYPES[dtype_name]
    checkpoints = dtype_name == "float64"
    # Generous against a busy machine; a real hang still ends at the test's 300 s limit.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=150))
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    runs = [(case, "ddp") for case in CASES] + [(case, "fsdp") for case in FSDP_CASES]
    for case, mode in runs:
        engine = build(case, mode)(GLOBAL_BATCH // world, mode, dtype)
        history = []
        name = f"{case}-{dtype_name}" + ("" if mode == "ddp" else f"-{mode}")
        for tick in range(1, ticks + 1):
            engine.step()
            history.append(parameters(engine))
            if tick == save_at and checkpoints:
                engine.save(out / f"{name}.pt")
        torch.save(history, out / f"{name}.rank{rank}.pt")
        if mode == "fsdp" and checkpoints:
            torch.save(_shards(engine), out / f"{name}.shards.rank{rank}.pt")
            # Resumed on the same ranks: the file's full tensors are sliced into shards.
            resumed = build(case, mode)(GLOBAL_BATCH // world, mode, dtype)
            resumed.load(out / f"{name}.pt")
            for _ in range(save_at, ticks):
                resumed.step()
            torch.save(parameters(resumed), out / f"{name}.resumed.rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # Under "fsdp", torch's DTensor caches (sharding propagation, redistribution plans)
    # keep the device mesh, and with it the process group and its gloo threads, until the
    # interpreter's own teardown, which then aborted a rank of a loaded machine after every
    # file here was written ("terminate called without an active exception"). Everything
    # is on disk: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
