"""A data-parallel run that checkpoints after every tick, slow enough to be killed inside:
python -m torch.distributed.run --standalone --nproc_per_node N
    -m tests.distributed.killable OUT TICKS [--resume]

Writes OUT/pid.rank<r> at start, OUT/checkpoint.pt after every tick (rank 0), and the
final parameters to OUT/final.rank<r>.pt."""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .levels import parameters, two_levels

GLOBAL_BATCH = 16


def main() -> None:
    out, ticks = Path(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    (out / f"pid.rank{rank}").write_text(str(os.getpid()))
    engine = two_levels("cg", GLOBAL_BATCH // world, "ddp")
    if "--resume" in sys.argv:
        engine.load(out / "checkpoint.pt")
    while engine.tick < ticks:
        engine.step()
        engine.save(out / "checkpoint.pt")
        time.sleep(0.3)
    torch.save(parameters(engine), out / f"final.rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
