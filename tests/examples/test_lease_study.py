"""examples/lease_study.py end to end on digits (real images, offline), and continuing a
study that stopped part-way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "lease_study.py"
TINY = [
    "--dataset",
    "digits",
    "--image-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--search-layers",
    "2",
    "--search-channels",
    "4",
    "--search-batch-size",
    "8",
    "--search-steps",
    "2",
    "--pgd-steps",
    "1",
    "--audience",
    "resnet_tiny",
    "--eval-layers",
    "2",
    "--eval-channels",
    "4",
    "--eval-batch-size",
    "64",
    "--eval-epochs",
    "1",
    "--cutout",
    "0",
    "--seeds",
    "1",
]


def study(out: Path, methods: str) -> int:
    return load_script(SCRIPT).main([*TINY, "--out", str(out), "--methods", methods])


@pytest.mark.slow
def test_study_of_two_methods_writes_the_report_and_continues_where_it_stopped(tmp_path, capsys):
    out = tmp_path / "study"
    assert study(out, "lease") == 0
    first = json.loads((out / "lease" / "seed0" / "result.json").read_text())
    assert 0.0 <= first["test_error"] <= 1.0 and first["search_seconds"] > 0
    assert (out / "lease" / "seed0" / "search" / "genotype.json").exists()

    # Started again with one more method: the finished run is kept, not repeated.
    capsys.readouterr()
    assert study(out, "lease,darts") == 0
    assert "lease seed 0: done before, kept" in capsys.readouterr().err
    assert json.loads((out / "lease" / "seed0" / "result.json").read_text()) == first
    report = (out / "study.md").read_text()
    assert "| lease | 1 |" in report and "| darts | 1 |" in report
    assert "| lease | 1 |" in report.split("Paired with")[1]
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_retrain_retrains_a_finished_runs_cell_from_other_seeds(tmp_path, capsys):
    out = tmp_path / "study"
    assert study(out, "random") == 0  # a drawn cell, no search: the quickest finished run
    own = json.loads((out / "random" / "seed0" / "result.json").read_text())["test_error"]
    capsys.readouterr()
    args = [*TINY, "--out", str(out), "--retrain", "random:0", "--retrain-seeds", "5,6"]
    assert load_script(SCRIPT).main(args) == 0
    printed = capsys.readouterr().out
    errors = {}
    for other in (5, 6):
        folder = out / "random" / "seed0" / "retrain" / f"seed{other}"
        errors[other] = json.loads((folder / "test_error.json").read_text())["test_error"]
        assert 0.0 <= errors[other] <= 1.0
        line = f"random seed 0's cell, retrained from seed {other}: {100 * errors[other]:.2f} %"
        assert line in printed
    assert f"random seed 0's own retraining: {100 * own:.2f} %" in printed
    # the study's own result is untouched
    assert json.loads((out / "random" / "seed0" / "result.json").read_text())["test_error"] == own
    # the study's report, written again, gives the cell's three retrainings
    assert study(out, "random") == 0
    report = (out / "study.md").read_text().split("## Retraining noise")[1]
    row = f"| random seed 0 | {100 * own:.2f} | {100 * errors[5]:.2f} (seed 5), "
    assert row in report and "pooled over the cells" in report


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--retrain", "random:0"], "--retrain and --retrain-seeds go together"),
        (["--retrain", "nope:0", "--retrain-seeds", "1"], "--retrain takes METHOD:SEED"),
        (["--retrain", "random:0", "--retrain-seeds", "0"], "other than the run's own"),
        (["--retrain", "random:0", "--retrain-seeds", "a"], "comma-separated integers"),
        (["--retrain", "lease:0", "--retrain-seeds", "1"], "no cell for lease seed 0"),
    ],
)
def test_retrain_refuses_bad_requests_with_one_line(tmp_path, capsys, extra, named):
    with pytest.raises(SystemExit) as stopped:
        load_script(SCRIPT).main([*TINY, "--out", str(tmp_path / "study"), *extra])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(("error:", "usage:")) or "error:" in err[-1]
    assert named in err[-1]
    assert not (tmp_path / "study" / "lease" / "seed0" / "retrain").exists()
