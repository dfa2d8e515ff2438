"""The examples' default CPU threads on a quiet machine and on one that other jobs keep
busy.

Each run is the main job's search on real images, cut to a few architecture updates
(``examples/lease_cifar.py search --small --dataset digits --max-steps 3``, one process,
whole-process wall time), started as a fresh process with one of the thread settings:

- ``default``: no flag (one thread per usable core, adapted while training to the cores
  other processes leave free: ``problems/threads.py``);
- ``cores``: ``--threads <cores>``, fixed (the examples' default before the adaptation);
- ``one``: ``--threads 1``.

Busy: one spinning process per core, started here and ended after the runs (each is
bounded in time as well). Rounds interleave the settings; the table gives the median
seconds and the median of the paired ratios to ``one`` (busy) and to ``cores`` (quiet).
The targets: busy, ``default`` within 1.3× of ``one``; quiet, no slower than ``cores``.

    python benchmarks/threads.py [--rounds 3] [--steps 3] [--busy-only | --quiet-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("default", "cores", "one")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def spinners(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` processes that each keep a core busy for at most ``seconds``."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def run(setting: str, steps: int, out: Path, timeout: float) -> float:
    """Wall seconds of one search with ``setting``'s threads."""
    flags = {"default": [], "cores": ["--threads", str(usable_cores())], "one": ["--threads", "1"]}
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    command = [
        sys.executable,
        str(ROOT / "examples" / "lease_cifar.py"),
        "search",
        "--small",
        "--dataset",
        "digits",
        "--max-steps",
        str(steps),
        "--no-progress",
        "--workers",
        "0",
        "--overwrite",
        "--out",
        str(out),
        *flags[setting],
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=timeout, capture_output=True)
    return time.perf_counter() - start


def measure(condition: str, rounds: int, steps: int, timeout: float) -> dict[str, list[float]]:
    busy = usable_cores() if condition == "busy" else 0
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    load = spinners(busy, rounds * len(SETTINGS) * timeout)
    try:
        with tempfile.TemporaryDirectory() as folder:
            for r in range(rounds):
                order = SETTINGS[r % 3 :] + SETTINGS[: r % 3]  # no setting always first
                for setting in order:
                    seconds = run(setting, steps, Path(folder) / setting, timeout)
                    times[setting].append(seconds)
                    print(f"{condition} round {r + 1}: {setting} {seconds:.1f} s", flush=True)
    finally:
        for p in load:
            p.kill()
            p.wait()
    return times


def table(condition: str, times: dict[str, list[float]], baseline: str) -> str:
    lines = [
        f"{condition} ({usable_cores() if condition == 'busy' else 0} spinning processes):",
        f"  {'threads':<8} {'median s':>9} {'ratio to ' + baseline:>16}",
    ]
    for setting in SETTINGS:
        ratios = [a / b for a, b in zip(times[setting], times[baseline])]
        lines.append(
            f"  {setting:<8} {statistics.median(times[setting]):>9.1f} "
            f"{statistics.median(ratios):>16.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run at most")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--busy-only", action="store_true")
    which.add_argument("--quiet-only", action="store_true")
    args = parser.parse_args()
    print(f"{usable_cores()} usable cores; load before: {os.getloadavg()[0]:.2f}")
    results = []
    if not args.busy_only:
        quiet = measure("quiet", args.rounds, args.steps, args.timeout)
        results.append(table("quiet", quiet, "cores"))
    if not args.quiet_only:
        busy = measure("busy", args.rounds, args.steps, args.timeout)
        results.append(table("busy", busy, "one"))
    print("\n".join(results))


if __name__ == "__main__":
    main()
