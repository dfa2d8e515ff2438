"""Stopping a search: Ctrl-C or SIGTERM stop it at the next update's end with a
checkpoint and one line that says how to resume, and the resumed run ends where a straight
one does; a run checkpoints by wall time too, so a kill loses minutes, not the run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ..mlo.test_state_untouched import assert_identical
from ..scripts import kill_after_first_checkpoint, last_step, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "lease_cifar.py"
ARGS = [
    "search",
    "--dataset",
    "digits",
    "--image-size",
    "8",
    "--layers",
    "3",
    "--init-channels",
    "4",
    "--batch-size",
    "8",
    "--audience",
    "resnet_tiny",
    "--pgd-steps",
    "1",
    "--workers",
    "0",
    "--no-progress",
    "--log-every",
    "1",
    "--max-steps",
    "6",
    "--checkpoint-every",
    "100",  # only the signal, the wall clock or the end writes one
]


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *ARGS, "--out", str(out), *extra]


def engine_state(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)["engine"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight") / "out"
    subprocess.run(command(out), cwd=ROOT, env=subprocess_env(), check=True, timeout=600)
    return engine_state(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_a_safe_point_with_a_checkpoint_and_one_line(tmp_path, straight, sig):
    out = tmp_path / "out"
    process = subprocess.Popen(
        command(out), cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while last_step(out) < 2:  # two updates recorded: training is under way
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(sig)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped: stopped by {sig.name} after update ")
    assert "checkpoint.pt holds it: run the same command with --resume" in last
    stopped = engine_state(out)
    assert 2 <= stopped["tick"] < 6
    done = subprocess.run(
        command(out, "--resume"), cwd=ROOT, env=subprocess_env(), timeout=600, check=True
    )
    assert done.returncode == 0
    assert_identical(straight, engine_state(out))


@pytest.mark.slow
def test_a_run_checkpoints_by_wall_time_so_a_kill_loses_little(tmp_path, straight):
    out = tmp_path / "out"
    kill_after_first_checkpoint(
        command(out, "--checkpoint-minutes", "0.0001"), out, seed=3, min_step=2, cwd=ROOT
    )
    assert engine_state(out)["tick"] < 6  # written by the clock, before the end
    subprocess.run(
        command(out, "--resume", "--checkpoint-minutes", "0.0001"),
        cwd=ROOT,
        env=subprocess_env(),
        timeout=600,
        check=True,
    )
    assert_identical(straight, engine_state(out))
