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
