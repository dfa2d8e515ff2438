"""``--resume`` from a file that is not a usable checkpoint: one ``error:`` line, exit 2,
no traceback, no advice to load with weights_only=False, and the file left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ..scripts import load_script, tiny_nas

ROOT = Path(__file__).resolve().parents[2]
ARGS = tiny_nas("digits")


def random_bytes(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def not_mlo(path: Path) -> None:
    torch.save({"model": torch.zeros(2)}, path)


def list_payload(path: Path) -> None:
    torch.save([1, 2, 3], path)


def folder(path: Path) -> None:
    path.mkdir()


def pickled_object(path: Path) -> None:
    torch.save({"engine": Path("x")}, path)  # an object weights_only refuses


@pytest.mark.parametrize("make", [random_bytes, not_mlo, list_payload, folder, pickled_object])
@pytest.mark.parametrize("command", [["search"], ["evaluate", "--genotype", "DARTS_V2"]])
def test_a_bad_checkpoint_is_one_error_line_and_changes_nothing(make, command, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    checkpoint = out / "checkpoint.pt"
    make(checkpoint)
    before = checkpoint.read_bytes() if checkpoint.is_file() else None
    example = load_script(ROOT / "examples" / "darts_cifar.py")
    with pytest.raises(SystemExit) as exit_:
        example.main([*command, *ARGS, "--out", str(out), "--resume"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert "Traceback" not in error and "weights_only=False" not in error
    assert (checkpoint.read_bytes() if checkpoint.is_file() else None) == before
