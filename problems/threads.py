"""How many CPU threads torch uses in the examples.

torch's default (one thread per physical core) oversubscribes a machine that other
processes are using, or a process limited to fewer cores (taskset, containers): its
OpenMP threads then wait for each other and a run slows down many times over. The
examples set the thread count from the cores this process may run on, unless told
otherwise, say so in the log, and give each data-loading worker one thread.
"""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure_threads(requested: int | None) -> str:
    """Set torch's intra-op threads: ``requested`` (``--threads``), else
    ``OMP_NUM_THREADS`` when set, else the usable cores. Returns the line to log."""
    cores = usable_cores()
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads {requested}: give at least 1")
        threads, source = requested, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]):
        threads, source = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        threads, source = cores, f"the {cores} core(s) this process may use"
    torch.set_num_threads(threads)
    line = f"torch uses {threads} thread(s) ({source}); each data worker uses 1"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if requested is None and load > cores + 0.5:
        line += (
            f". The machine is busy (load {load:.1f} on {cores} core(s)): --threads 1 may be faster"
        )
    return line


def one_thread_per_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: each worker process computes on one thread."""
    torch.set_num_threads(1)
