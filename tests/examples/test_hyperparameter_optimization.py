"""The hyperparameter example runs on the real digits and moves its penalty weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..scripts import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_example_runs_and_reports_both_methods(tmp_path):
    pytest.importorskip("sklearn", reason="the example's data ship with scikit-learn")
    result = subprocess.run(
        [
            sys.executable,
            "examples/hyperparameter_optimization.py",
            "--steps",
            "5",
            "--inner-steps",
            "5",
            "--seeds",
            "2",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "mlo per-feature L2 (cg)" in result.stdout
    assert "single weight decay" in result.stdout
    records = [json.loads(x) for x in (tmp_path / "metrics_seed0.jsonl").read_text().splitlines()]
    assert records[-1]["updates"] == {"penalty": 5, "classifier": 25}


def test_hpo_levels_move_the_penalty():
    pytest.importorskip("sklearn", reason="the example's data ship with scikit-learn")
    import torch

    import mlo
    from problems.hpo import build, load_digits_splits

    data = load_digits_splits(seed=0)
    problems, deps = build(data.features, 10, [data.train], [data.val], inner_steps=3)
    engine = mlo.Engine(problems, deps, mlo.EngineConfig(steps=3, progress=False))
    before = engine.problems["penalty"].module.log_l2.detach().clone()
    engine.run()
    after = engine.problems["penalty"].module.log_l2.detach()
    assert torch.isfinite(after).all()
    assert not torch.equal(before, after)


def test_config_file_unknown_key_is_refused_with_the_closest_valid_one(tmp_path):
    config = tmp_path / "hpo.toml"
    config.write_text("steps = 5\ninner_step = 3\n")
    result = subprocess.run(
        [sys.executable, "examples/hyperparameter_optimization.py", "--config", str(config)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown key inner_step; did you mean inner_steps?" in result.stderr
