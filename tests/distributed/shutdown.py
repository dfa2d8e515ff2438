"""One rank of the shutdown test: python -m torch.distributed.run --standalone
--nproc_per_node 2 -m tests.distributed.shutdown OUT

mlo imported before the process group exists (as a script does), then a data-parallel
engine built and stepped once under gloo, dropped, and the group destroyed: the names of
the threads this rank still runs are written to OUT/threads.rank<r>.json."""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .levels import CASES


def thread_names() -> list[str]:
    """The names of this process's native threads (Linux)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:  # the thread ended while listed
            continue
    return sorted(names)


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    engine = CASES["two-cg"](8, "ddp", torch.float64)
    engine.step()
    del engine
    dist.barrier()
    dist.destroy_process_group()
    (out / f"threads.rank{int(os.environ['RANK'])}.json").write_text(json.dumps(thread_names()))


if __name__ == "__main__":
    main()
