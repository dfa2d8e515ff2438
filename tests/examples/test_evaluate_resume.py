"""``evaluate`` resumes exactly at any update, mid-epoch included: stopped with
``--max-steps`` or killed with SIGKILL, then ``--resume``, it ends bit-identical to a run
that went straight through (weights, BatchNorm statistics, optimizer, schedule, data
position, random generators)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..mlo.test_state_untouched import assert_identical
from ..scripts import kill_after_first_checkpoint, load_script, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "darts_cifar.py"
# 1,438 digits in batches of 64: 22 updates per epoch; 2 epochs.
ARGS = [
    "evaluate",
    "--dataset",
    "digits",
    "--image-size",
    "8",
    "--genotype",
    "DARTS_V2",
    "--layers",
    "2",
    "--init-channels",
    "4",
    "--batch-size",
    "64",
    "--epochs",
    "2",
    "--cutout",
    "2",
    "--workers",
    "0",
    "--no-progress",
    "--log-every",
    "5",
    "--checkpoint-every",
    "3",
]


def final_state(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)["engine"]


def evaluate(out: Path, *extra: str) -> None:
    assert load_script(SCRIPT).main([*ARGS, "--out", str(out), *extra]) == 0


@pytest.mark.slow
def test_evaluation_stopped_mid_epoch_resumes_bit_identically(tmp_path):
    evaluate(tmp_path / "straight")
    evaluate(tmp_path / "split", "--max-steps", "13")  # mid-way through the first epoch
    assert final_state(tmp_path / "split")["tick"] == 13
    evaluate(tmp_path / "split", "--resume")
    straight = final_state(tmp_path / "straight")
    assert straight["tick"] == 44
    assert_identical(straight, final_state(tmp_path / "split"))


@pytest.mark.slow
def test_evaluation_killed_with_sigkill_resumes_bit_identically(tmp_path):
    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(SCRIPT), *ARGS, "--out", str(out), *extra]

    env = subprocess_env()
    subprocess.run(command(tmp_path / "straight"), cwd=ROOT, check=True, timeout=600, env=env)
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(command(killed), killed, seed=2, cwd=ROOT, env=env)
    subprocess.run(command(killed, "--resume"), cwd=ROOT, check=True, timeout=600, env=env)
    assert_identical(final_state(tmp_path / "straight"), final_state(killed))
