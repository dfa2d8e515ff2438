"""How many CPU threads torch uses in the examples.

torch's default (one thread per physical core) oversubscribes a machine that other
processes are using, or a process limited to fewer cores (taskset, containers): its
OpenMP threads then wait for each other, spinning while the core they wait for runs
another process, and a run slows down many times over (measured by
``benchmarks/threads.py``: a 3-step LeaSE search took 4× as long with 2 threads as with 1
on a 2-core machine that other jobs kept busy).

So, unless told (``--threads`` or ``OMP_NUM_THREADS``), the examples start with one
thread per core this process may use and let a ``ThreadGovernor`` adapt the count
while they train: every couple of seconds it measures how much of those cores other
processes used, and keeps torch at the cores left over (at least one). Told a number,
they keep it. Each data-loading worker computes on one thread.

A changed thread count changes the order of some float sums, so two runs whose counts
differ agree to rounding, not bit for bit; a run that must be reproducible bit for bit
(a resumed run compared with a straight one) fixes the count with ``--threads``.

The governor is process-wide, as torch's thread count is: ``configure_threads``
installs it, ``adapt_threads`` (called by the training loops once per update) lets
it look, at most once per interval.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch

Sample = Callable[[], tuple[float, float, float]]
"""``() -> (busy, own, wall)``: seconds of CPU time used on this process's cores by all
processes, by this process, and the wall clock, each since an arbitrary start."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_sample() -> tuple[float, float, float] | None:
    """``(busy, own, wall)`` from ``/proc/stat`` (the cores in this process's affinity
    mask), ``time.process_time()`` and a monotonic clock; ``None`` where there is no
    ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cores is not None and int(name[3:]) not in cores:
            continue
        values = [int(v) for v in fields[:8]]
        # user nice system idle iowait irq softirq steal: all but idle and iowait
        busy += sum(values) - values[3] - values[4]
    return busy / tick, time.process_time(), time.monotonic()


class ThreadGovernor:
    """Keeps torch's threads at the cores other processes leave free.

    ``threads = max(1, floor(cores − others + 0.25))``, where ``others`` is the CPU the
    other processes used on this process's cores since the last look, in cores. It leans
    to fewer threads: one thread too many on a busy core costs several times the time (a
    thread spins waiting for one that is not running), one too few at most the share of
    that core.

    Args:
        cores: the most threads to use.
        sample: where the CPU times come from (default ``cpu_sample``).
        interval: the least seconds between two looks.
    """

    def __init__(
        self,
        cores: int,
        sample: Callable[[], tuple[float, float, float] | None] = cpu_sample,
        interval: float = 2.0,
    ) -> None:
        self.cores, self.sample, self.interval = cores, sample, interval
        self.last = sample()
        self.threads = cores
        torch.set_num_threads(cores)
        self.changes = 0

    def adjust(self) -> int:
        """Look if the interval has passed, set torch's threads; returns the count."""
        if self.last is None:
            return self.threads
        if self.sample is cpu_sample and time.monotonic() - self.last[2] < self.interval:
            return self.threads  # too soon: no read of /proc/stat on this update
        now = self.sample()
        if now is None or now[2] - self.last[2] < self.interval:
            return self.threads
        (busy0, own0, wall0), (busy1, own1, wall1) = self.last, now
        self.last = now
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
        threads = max(1, min(self.cores, math.floor(self.cores - others + 0.25)))
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
            self.changes += 1
        return threads


_governor: ThreadGovernor | None = None  # process-wide, as torch's thread count is


def configure_threads(requested: int | None) -> str:
    """Set torch's intra-op threads: ``requested`` (``--threads``), else
    ``OMP_NUM_THREADS`` when set, else the usable cores, adapted while training to the
    cores other processes leave free (``ThreadGovernor``). Returns the line to log."""
    global _governor
    cores = usable_cores()
    _governor = None
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads {requested}: give at least 1")
        torch.set_num_threads(requested)
        return f"torch uses {requested} thread(s) (--threads); each data worker uses 1"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env):
        torch.set_num_threads(int(env))
        return f"torch uses {int(env)} thread(s) (OMP_NUM_THREADS); each data worker uses 1"
    torch.set_num_threads(cores)
    if cores == 1:
        return "torch uses 1 thread (the 1 core this process may use); each data worker uses 1"
    _governor = ThreadGovernor(cores)
    return (
        f"torch uses up to {cores} threads (the {cores} cores this process may use), fewer "
        "while other processes keep some of them busy (--threads N fixes the count); each "
        "data worker uses 1"
    )


def adapt_threads() -> int:
    """Let the governor look (at most once per its interval); torch's thread count."""
    if _governor is not None:
        return _governor.adjust()
    return torch.get_num_threads()


def one_thread_per_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: each worker process computes on one thread."""
    torch.set_num_threads(1)
