"""The sample order and augmentations do not depend on the number of data workers, and a
search stopped past its first epoch with workers on resumes exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ..mlo.test_state_untouched import assert_identical
from ..scripts import kill_after_first_checkpoint, load_script, tiny_nas

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "darts_cifar.py"
# digits: 719 search-train images, batch 128: 5 updates an epoch; 7 steps pass it. One
# thread in every process, so that float reductions agree between the killed and the
# resumed process.
ARGS = tiny_nas(
    "digits", batch=128, max_steps=7, threads=1, solver="first_order", checkpoint_every=1
)


def search(out: Path, *extra: str) -> dict:
    assert load_script(SCRIPT).main(["search", *ARGS, "--out", str(out), *extra]) == 0
    return torch.load(out / "checkpoint.pt", weights_only=True)["engine"]


@pytest.fixture(scope="module")
def without(tmp_path_factory) -> dict:
    """The engine state at the end of the straight run, loaded with no worker."""
    return search(tmp_path_factory.mktemp("w0") / "out", "--workers", "0")


@pytest.mark.slow
@pytest.mark.parametrize("min_step", [6, 2], ids=["epoch-1", "epoch-0"])
def test_workers_change_nothing_and_a_kill_past_the_first_epoch_resumes_exactly(
    min_step, tmp_path, without
):
    # The straight run loads with no worker, the killed and resumed one with two: equal
    # states show both that workers change nothing and that the resume is exact.
    killed = tmp_path / "killed"
    command = [sys.executable, str(SCRIPT), "search", *ARGS, "--out", str(killed)]
    # Killed at a random moment after update 6 (in the second epoch: 5 updates an epoch)
    # or after update 2 (in the first), then resumed to the end.
    kill_after_first_checkpoint(
        [*command, "--workers", "2"], killed, seed=3, min_step=min_step, cwd=ROOT
    )
    resumed = search(killed, "--workers", "2", "--resume")
    assert_identical(without, resumed, "resumed")
    assert without["problems"]["network"]["data"]["epoch"] == 1
