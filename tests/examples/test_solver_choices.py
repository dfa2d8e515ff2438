"""The small examples offer only solvers that apply to their levels, and MAML's iMAML
exposes its CG knobs with a ridge by default (its task losses are not convex)."""

from __future__ import annotations

from pathlib import Path

import pytest

from problems.cli import tomllib, trained_level_solvers

from ..scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "script", ["hyperparameter_optimization.py", "data_reweighting.py", "learning_by_teaching.py"]
)
def test_explicit_is_not_offered_to_levels_without_a_best_response(script, tmp_path, capsys):
    assert "explicit" not in trained_level_solvers() and "cg" in trained_level_solvers()
    example = load_script(ROOT / "examples" / script)
    with pytest.raises(SystemExit) as exit_:
        example.main(["--solver", "explicit"])
    assert exit_.value.code == 2
    file = tmp_path / "config.toml"
    file.write_text('solver = "explicit"\n')
    with pytest.raises(SystemExit) as exit_:
        example.main(["--config", str(file)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "needs a level with an explicit best_response" in error and "Traceback" not in error


def test_maml_exposes_the_cg_knobs_with_a_ridge_by_default(capsys):
    maml = load_script(ROOT / "examples" / "maml.py")
    maml.main(["--print-config"])
    assert tomllib.loads(capsys.readouterr().out)["imaml_cg_ridge"] > 0
    maml.main(["--imaml-cg-iterations", "7", "--imaml-cg-ridge", "0.5", "--print-config"])
    config = tomllib.loads(capsys.readouterr().out)
    assert (config["imaml_cg_iterations"], config["imaml_cg_ridge"]) == (7, 0.5)
