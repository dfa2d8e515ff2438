"""Load an example or benchmark script as a module, as the tests call into them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """The environment for a test's child process: one torch thread, so that parallel
    children never oversubscribe the machine; a child that crashes (SIGSEGV, SIGABRT)
    prints the Python stack of each thread."""
    import os

    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return {**os.environ, **threads, "PYTHONFAULTHANDLER": "1"}


def torchrun_command(ranks: int = 2) -> list[str]:
    """The start of a command that runs ``ranks`` local processes under torchrun."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node", str(ranks)]


def run_child(command: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
    """Run ``command`` from the project root with :func:`subprocess_env` (plus ``env``),
    capturing its text output; a timeout raises, so a hang fails the test."""
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**subprocess_env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build_site(out: Path) -> None:
    """Build the documentation site into ``out`` with ``mkdocs build --strict``; asserts
    that it built."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**subprocess_env(), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]


def load_script(path: Path) -> ModuleType:
    """A fresh module executed from ``path``, registered under its stem (pydantic resolves
    a script's annotations through ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def kill_after_first_checkpoint(
    command: list[str], out: Path, seed: int, min_step: int = 0, **popen
) -> None:
    """Start ``command``, wait for ``out/checkpoint.pt`` (and for a metric record of step
    ``min_step`` or later), wait a seeded random moment up to a second longer, and
    SIGKILL it; asserts it was killed while running."""
    import random
    import signal
    import subprocess
    import time

    popen.setdefault("env", subprocess_env())
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() or last_step(out) < min_step:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0, 1.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def last_step(out: Path) -> int:
    """The latest step in ``out/metrics.jsonl`` (-1 before the first record)."""
    import contextlib
    import json

    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return -1
    steps = [-1]
    for line in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # a line being written
            steps.append(json.loads(line)["step"])
    return max(steps)


def tiny_nas(
    dataset: str = "synthetic", *, batch: int = 8, max_steps: int = 1, **more
) -> list[str]:
    """Flags for a NAS example run that takes seconds on a CPU: 8×8 images, 2 cells of 4
    channels, no data workers, no progress display. ``more`` adds flags (``key=value``
    becomes ``--key value``; underscores become dashes)."""
    flags = [
        "--dataset",
        dataset,
        "--image-size",
        "8",
        "--layers",
        "2",
        "--init-channels",
        "4",
        "--batch-size",
        str(batch),
        "--workers",
        "0",
        "--no-progress",
        "--max-steps",
        str(max_steps),
    ]
    for key, value in more.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags
