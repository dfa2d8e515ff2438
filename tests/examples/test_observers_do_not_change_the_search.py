"""Watching a search does not change it: how often a search logs, and where it is stopped
and resumed, leave the trained state bit-identical (LeaSE and DARTS examples).

The log frequencies and the stop step are drawn at random (seeded); stopping and
resuming the DARTS example is checked here too. Every run ends at the same step; the
engine's whole checkpoint state (parameters, BatchNorm statistics, optimizer and scheduler
states, data positions, random generators) is compared with a run that never logs
(``--log-every`` larger than the run).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ..mlo.test_state_untouched import assert_identical
from ..scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
COMMON = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "64",
    "--image-size",
    "8",
    "--layers",
    "2",
    "--init-channels",
    "4",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--no-progress",
    "--checkpoint-every",
    "1000",
]
EXAMPLES = {
    "lease": ("lease_cifar.py", ["--audience", "resnet_tiny", "--pgd-steps", "1"]),
    "darts": ("darts_cifar.py", []),
}


def draw_cases(seed: int, n: int) -> list[tuple[int, int, int, int]]:
    """(log-every straight, stop step, log-every before the stop, log-every after)."""
    rng = random.Random(seed)
    return [
        (
            rng.choice([1, 2, 3, 7]),
            rng.randint(1, STEPS - 1),
            rng.choice([1, 2, 3, 7]),
            rng.choice([1, 2, 3, 7]),
        )
        for _ in range(n)
    ]


def run(example: str, out: Path, *args: str) -> dict:
    script, extra = EXAMPLES[example]
    code = load_script(ROOT / "examples" / script).main(
        ["search", "--out", str(out), *COMMON, *extra, *args]
    )
    assert code == 0
    return torch.load(out / "checkpoint.pt", weights_only=True)["engine"]


@pytest.fixture(scope="module")
def unlogged(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("unlogged")
    return {
        name: run(name, root / name, "--max-steps", str(STEPS), "--log-every", "1000")
        for name in EXAMPLES
    }


@pytest.mark.slow
@pytest.mark.parametrize("example", list(EXAMPLES))
@pytest.mark.parametrize("case", draw_cases(18, 1))
def test_logging_and_resuming_train_the_same_model_as_no_logging(example, case, unlogged, tmp_path):
    log_straight, stop, log_before, log_after = case
    straight = run(
        example, tmp_path / "straight", "--max-steps", str(STEPS), "--log-every", str(log_straight)
    )
    run(example, tmp_path / "split", "--max-steps", str(stop), "--log-every", str(log_before))
    resumed = run(
        example,
        tmp_path / "split",
        "--max-steps",
        str(STEPS),
        "--log-every",
        str(log_after),
        "--resume",
    )
    assert straight["tick"] == resumed["tick"] == STEPS
    assert_identical(unlogged[example], straight, "straight")
    assert_identical(unlogged[example], resumed, "resumed")
