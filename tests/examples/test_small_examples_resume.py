"""The four small examples write checkpoints into OUT/checkpoints and resume exactly:
stopped part-way (a smaller --steps) and continued with --resume, every engine they train
ends bit-identical to a run that went straight through."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ..mlo.test_state_untouched import assert_identical
from ..scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "hyperparameter_optimization.py": ["--inner-steps", "3"],
    "data_reweighting.py": [],
    "maml.py": [],
    "learning_by_teaching.py": [],
}


def run(script: str, out: Path, steps: int, *extra: str) -> None:
    args = ["--steps", str(steps), "--seeds", "1", "--no-progress", "--out", str(out)]
    load_script(ROOT / "examples" / script).main([*args, *EXAMPLES[script], *extra])


def final_states(out: Path) -> dict[str, dict]:
    """Each run's last engine state, without the list of checkpoint files it wrote (the
    split run wrote one more, at its stop)."""
    states = {}
    for folder in sorted((out / "checkpoints").iterdir()):
        state = torch.load(max(folder.glob("step_*.pt")), weights_only=True)["engine"]
        state.pop("written_checkpoints")
        states[folder.name] = state
    return states


@pytest.mark.parametrize("script", list(EXAMPLES))
def test_stopped_and_resumed_runs_end_bit_identical(script, tmp_path):
    run(script, tmp_path / "straight", 6)
    run(script, tmp_path / "split", 3)
    assert all(s["tick"] == 3 for s in final_states(tmp_path / "split").values())
    run(script, tmp_path / "split", 6, "--resume")
    straight, resumed = final_states(tmp_path / "straight"), final_states(tmp_path / "split")
    assert straight and straight.keys() == resumed.keys()
    for name, state in straight.items():
        assert state["tick"] == 6, name
        assert_identical(state, resumed[name], name)


def hpo(out: Path, *extra: str) -> int | None:
    args = ["--steps", "2", "--seeds", "1", "--no-progress", "--inner-steps", "2"]
    return load_script(ROOT / "examples" / "hyperparameter_optimization.py").main(
        [*args, "--out", str(out), *extra]
    )


def refused(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_:
        hpo(*args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_small_examples_keep_the_nas_examples_folder_rules(tmp_path, capsys):
    """A second run is refused (it replaced the first), --resume needs a run of this
    example with the same settings (--override names those that may change), and
    --overwrite replaces it."""
    from .test_bad_input_table import snapshot

    out = tmp_path / "out"
    assert "holds no run of hyperparameter_optimization" in refused(capsys, out, "--resume")
    assert not out.exists()  # nothing made
    hpo(out)
    before = snapshot(tmp_path)
    assert "holds a previous run of hyperparameter_optimization" in refused(capsys, out)
    line = refused(capsys, out, "--resume", "--solver", "neumann", "--inner-steps", "3")
    assert "inner_steps 2 in the checkpoint, 3 now" in line and "solver 'cg'" in line
    assert "--override inner_steps,solver" in line
    assert "inner_lr" in refused(capsys, out, "--resume", "--inner-lr", "0.1")
    assert "--override seed without --resume" in refused(capsys, out, "--override", "seed")
    assert snapshot(tmp_path) == before  # every refusal changed nothing
    hpo(out, "--resume", "--steps", "3", "--inner-lr", "0.1", "--override", "inner_lr")
    hpo(out, "--overwrite")
    other = tmp_path / "teaching"
    load_script(ROOT / "examples" / "learning_by_teaching.py").main(
        ["--steps", "1", "--seeds", "1", "--no-progress", "--out", str(other)]
    )
    assert "holds a run of learning_by_teaching" in refused(capsys, other)
