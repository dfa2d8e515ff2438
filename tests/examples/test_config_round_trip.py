"""Every example's ``--print-config`` prints TOML that ``--config`` reads back unchanged;
``--print-config | head`` ends quietly; config mistakes are reported all at once, with
nested keys written as they are in the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from problems.cli import tomllib

from ..scripts import load_script, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    ("lease_cifar.py", []),
    ("lease_cifar.py", ["evaluate", "--short"]),
    ("darts_cifar.py", ["--small"]),
    ("lease_study.py", []),
    ("hyperparameter_optimization.py", []),
    ("data_reweighting.py", []),
    ("maml.py", []),
    ("learning_by_teaching.py", []),
]


def printed(script: str, args: list[str], capsys) -> str:
    capsys.readouterr()
    assert load_script(ROOT / "examples" / script).main([*args, "--print-config"]) in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize(("script", "args"), COMMANDS)
def test_print_config_round_trips_through_config(script, args, tmp_path, capsys):
    text = printed(script, args, capsys)
    tomllib.loads(text)  # valid TOML
    file = tmp_path / "config.toml"
    file.write_text(text)
    command = args[:1] if args[:1] == ["evaluate"] else []
    assert printed(script, [*command, "--config", str(file)], capsys) == text


def test_print_config_into_a_closed_pipe_ends_quietly():
    result = subprocess.run(
        f"{sys.executable} examples/lease_cifar.py --print-config | head -1",
        shell=True,
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout == 'dataset = "cifar10"\n'
    assert result.stderr == ""


def test_every_config_mistake_is_reported_at_once_with_nested_keys_as_written(tmp_path, capsys):
    file = tmp_path / "bad.toml"
    file.write_text("epochs = 0\n[lease]\nlamda = 2\n[lease.explanation]\nsteps = -1\n")
    with pytest.raises(SystemExit) as exit_:
        load_script(ROOT / "examples" / "lease_cifar.py").main(["--config", str(file)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    assert "unknown key lease.lamda; did you mean lease.lam?" in error
    assert "epochs:" in error and "lease.explanation.steps:" in error


def test_top_level_help_names_the_common_flags(capsys):
    with pytest.raises(SystemExit):
        load_script(ROOT / "examples" / "lease_cifar.py").main(["--help"])
    out = capsys.readouterr().out
    assert "search --help" in out and "--dataset" in out and "--small" in out


@pytest.mark.parametrize("script", ["darts_cifar.py", "lease_cifar.py"])
def test_small_preset_yields_to_explicit_flags(script, capsys):
    small = tomllib.loads(printed(script, ["--small"], capsys))
    assert (small["layers"], small["batch_size"], small["max_steps"]) == (5, 16, 10)
    assert small["small"] is False  # the printed values are the effective ones
    mine = tomllib.loads(printed(script, ["--small", "--layers", "3", "--max-steps", "4"], capsys))
    assert (mine["layers"], mine["init_channels"], mine["max_steps"]) == (3, 8, 4)


def test_evaluate_short_prints_its_effective_values(capsys):
    short = tomllib.loads(printed("lease_cifar.py", ["evaluate", "--short"], capsys))
    assert (short["epochs"], short["max_steps"], short["layers"], short["short"]) == (
        1,
        100,
        6,
        False,
    )
    mine = tomllib.loads(
        printed("lease_cifar.py", ["evaluate", "--short", "--epochs", "3"], capsys)
    )
    assert mine["epochs"] == 3
