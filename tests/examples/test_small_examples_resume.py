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
