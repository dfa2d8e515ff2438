"""One rank of the data-parallel test: python -m torch.distributed.run --standalone
--nproc_per_node N -m tests.distributed.worker OUT TICKS SAVE_AT

For every case of ``levels.CASES`` in float64 and float32: per-rank batch 16/N, TICKS
ticks, a checkpoint after SAVE_AT ticks (OUT/<case>-<dtype>.pt, written by rank 0), and
each rank's parameters after every tick in OUT/<case>-<dtype>.rank<r>.pt."""

from __future__ import annotations

import datetime
import itertools
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .levels import CASES, DTYPES, parameters

GLOBAL_BATCH = 16


def main() -> None:
    out, ticks, save_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    for (case, build), (dtype_name, dtype) in itertools.product(CASES.items(), DTYPES.items()):
        engine = build(GLOBAL_BATCH // world, "ddp", dtype)
        history = []
        for tick in range(1, ticks + 1):
            engine.step()
            history.append(parameters(engine))
            if tick == save_at:
                engine.save(out / f"{case}-{dtype_name}.pt")
        torch.save(history, out / f"{case}-{dtype_name}.rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
