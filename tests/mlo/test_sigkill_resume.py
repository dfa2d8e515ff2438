"""A run killed with SIGKILL at random moments and resumed ends bit-identical to one
that ran straight through."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ..scripts import subprocess_env
from .test_state_untouched import assert_identical

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12


def worker(checkpoints: Path, result: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.mlo.sigkill_worker",
            str(checkpoints),
            str(result),
            str(STEPS),
            *extra,
        ],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight.pt"
    finish(worker(tmp_path / "straight", straight))
    expected = torch.load(straight, weights_only=True)

    rng = random.Random(0)
    kills = []
    for attempt in range(3):
        folder, result = tmp_path / f"run{attempt}", tmp_path / f"run{attempt}.pt"
        target = rng.randint(1, STEPS - 2)
        process = worker(folder, result)
        deadline = time.monotonic() + 120
        while not (folder / f"step_{target:08d}.pt").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))  # somewhere in the next tick, or mid-write
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL  # it was killed while running
        latest = sorted(folder.glob("step_*.pt"))[-1].name
        assert latest < f"step_{STEPS:08d}.pt"
        kills.append((target, latest))
        finish(worker(folder, result, "--resume"))
        assert_identical(expected, torch.load(result, weights_only=True))
    assert len(kills) == 3
