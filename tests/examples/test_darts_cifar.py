"""examples/darts_cifar.py end to end on the CIFAR-format fixture, and its failure paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from problems.cli import tomllib
from problems.nas import Genotype

from ..scripts import load_script
from .offline import assert_fails_offline_naming_data_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "darts_cifar.py"
TINY = [
    "--layers",
    "3",
    "--init-channels",
    "4",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--log-every",
    "2",
    "--checkpoint-every",
    "2",
    "--no-download",
]


def search(data_dir: Path, out: Path, *args: str) -> int:
    return example().main(["search", "--data-dir", str(data_dir), "--out", str(out), *TINY, *args])


def example():
    return load_script(SCRIPT)


@pytest.mark.slow
def test_search_writes_genotype_metrics_pictures_and_moves_alphas(cifar10_dir, tmp_path):
    out = tmp_path / "run"
    assert search(cifar10_dir, out, "--max-steps", "4") == 0
    genotype = Genotype.load(out / "genotype.json")
    assert len(genotype.normal) == 8 and len(genotype.reduce) == 8
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]  # --log-every 2, given explicitly
    assert set(records[-1]["loss"]) == {"network", "architecture"}
    for picture in ("cells.png", "alphas.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    history = saved["extra"]["history"]
    assert history["steps"] == [0, 2, 4]
    assert not torch.allclose(history["normal"][0], history["normal"][-1])


@pytest.mark.slow
def test_search_with_another_solver_and_partial_channels(cifar10_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        search(cifar10_dir, out, "--max-steps", "1", "--solver", "cg", "--partial-channels", "2")
        == 0
    )
    assert Genotype.load(out / "genotype.json")


@pytest.mark.slow
def test_evaluate_retrains_a_genotype_and_reports_test_error(cifar10_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        example().main(
            [
                "evaluate",
                "--genotype",
                "DARTS_V2",
                "--data-dir",
                str(cifar10_dir),
                "--out",
                str(out),
                "--short",
                "--max-steps",
                "3",
                *TINY,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "test error" in printed and "parameters" in printed
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= last["test_error"] <= 1.0 and last["params_millions"] > 0


def test_offline_without_data_fails_fast_with_a_clear_message(tmp_path):
    assert_fails_offline_naming_data_dir(SCRIPT, tmp_path / "none", "search")


def test_config_file_with_unknown_key_names_the_closest_one(tmp_path, capsys):
    config = tmp_path / "search.toml"
    config.write_text('dataset = "synthetic"\nbatch_sise = 8\n[hyper]\narch_lr = 0.1\n')
    with pytest.raises(SystemExit) as info:
        example().main(["search", "--config", str(config)])
    assert info.value.code == 2
    assert "unknown key batch_sise; did you mean batch_size?" in capsys.readouterr().err


def test_flags_override_the_config_file_and_print_config(tmp_path, capsys):
    config = tmp_path / "search.toml"
    config.write_text('dataset = "synthetic"\nbatch_size = 8\n[hyper]\narch_lr = 0.1\n')
    assert (
        example().main(["search", "--config", str(config), "--batch-size", "4", "--print-config"])
        == 0
    )
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["batch_size"] == 4 and printed["dataset"] == "synthetic"
    assert printed["hyper"]["arch_lr"] == 0.1 and printed["out"] == "runs/darts"


def test_invalid_value_names_the_field(capsys):
    with pytest.raises(SystemExit):
        example().main(["search", "--batch-size", "0"])
    assert "batch_size" in capsys.readouterr().err
