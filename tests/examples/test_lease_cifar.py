"""examples/lease_cifar.py end to end on the CIFAR-format fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from problems.cli import tomllib
from problems.nas import Genotype

from ..mlo.test_state_untouched import assert_identical
from ..scripts import kill_after_first_checkpoint, load_script, subprocess_env
from .offline import assert_fails_offline_naming_data_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "lease_cifar.py"
TINY = [
    "--layers",
    "3",
    "--init-channels",
    "4",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--audience",
    "resnet_tiny",
    "--pgd-steps",
    "1",
    "--no-progress",
    "--log-every",
    "1",
    "--checkpoint-every",
    "1",
    "--no-download",
]


def example():
    return load_script(SCRIPT)


def search(data_dir: Path, out: Path, *args: str) -> int:
    return example().main(["search", "--data-dir", str(data_dir), "--out", str(out), *TINY, *args])


def architecture(out: Path, level: str) -> dict[str, torch.Tensor]:
    engine = torch.load(out / "checkpoint.pt", weights_only=True)["engine"]
    return engine["problems"][level]["module"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("baseline", "levels", "top"),
    [
        ("none", {"relearn", "explainer", "explain", "audience"}, "relearn"),
        ("darts", {"architecture", "network"}, "architecture"),
    ],
)
def test_search_writes_outputs_and_moves_the_architecture(
    cifar10_dir, tmp_path, baseline, levels, top
):
    out = tmp_path / baseline
    assert search(cifar10_dir, out, "--max-steps", "2", "--baseline", baseline) == 0
    genotype = Genotype.load(out / "genotype.json")
    assert len(genotype.normal) == len(genotype.reduce) == 8
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(records[-1]["loss"]) == levels
    supernet_level = "network" if baseline == "darts" else "explainer"
    assert 0.0 <= records[-1][f"{supernet_level} acc"] <= 1.0
    for picture in ("cells.png", "alphas.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    history = torch.load(out / "checkpoint.pt", weights_only=True)["extra"]["history"]
    assert not torch.allclose(history["normal"][0], history["normal"][-1])
    assert set(architecture(out, top)) == {"alpha_normal", "alpha_reduce"}


def test_offline_without_data_fails_fast_and_names_data_dir(tmp_path):
    assert_fails_offline_naming_data_dir(SCRIPT, tmp_path / "none")


def test_lease_flags_reach_the_config(capsys):
    assert (
        example().main(
            [
                "--lam",
                "0.5",
                "--gamma",
                "2",
                "--explanation",
                "pgd_sign",
                "--solver",
                "cg",
                "--print-config",
            ]
        )
        == 0
    )
    config = tomllib.loads(capsys.readouterr().out)
    lease = config["lease"]
    assert lease["lam"] == 0.5 and lease["gamma"] == 2.0
    assert lease["explanation"] == {
        **lease["explanation"],
        "method": "pgd",
        "differentiable": False,
    }
    assert lease["explainer_solver"] == lease["audience_solver"] == "cg"
    assert config["out"] == "runs/lease" and config["epochs"] == 50
    assert config["batch_size"] == 64 and config["layers"] == 8
    assert config["init_channels"] == 16


@pytest.mark.slow
def test_search_killed_with_sigkill_resumes_to_the_same_architecture(tmp_path):
    def command(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            str(SCRIPT),
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "64",
            "--image-size",
            "8",
            "--out",
            str(out),
            "--max-steps",
            "3",
            *TINY,
            *extra,
        ]

    subprocess.run(
        command(tmp_path / "straight"),
        cwd=ROOT,
        env=subprocess_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(command(killed), killed, seed=1, cwd=ROOT)
    subprocess.run(
        command(killed, "--resume"),
        cwd=ROOT,
        env=subprocess_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    straight, resumed = (
        torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["engine"]["problems"]
        for d in ("straight", "killed")
    )
    # every level's parameters, buffers and optimizer state, bit for bit
    assert_identical(straight, resumed)


@pytest.mark.slow
def test_digits_search_then_evaluate_offline(tmp_path):
    """Real images without a download: search, then retrain the derived cell."""
    out = tmp_path / "search"
    args = ["--dataset", "digits", "--out", str(out), *TINY, "--batch-size", "8"]
    assert example().main(["search", *args, "--max-steps", "2"]) == 0
    genotype = out / "genotype.json"
    assert Genotype.load(genotype)
    evaluation = tmp_path / "evaluate"
    code = example().main(
        [
            "evaluate",
            "--dataset",
            "digits",
            "--genotype",
            str(genotype),
            "--out",
            str(evaluation),
            "--layers",
            "2",
            "--init-channels",
            "4",
            "--batch-size",
            "32",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    records = [json.loads(x) for x in (evaluation / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= records[-1]["test_error"] <= 1.0


@pytest.mark.slow
def test_fashion_mnist_search_then_evaluate_on_idx_files(tmp_path, monkeypatch):
    """Fashion-MNIST's real IDX format through torchvision's loader: search on the 60k
    training images' halves, retrain, test on the separate test file."""
    import problems.nas.data

    from ..idx_fixture import write_fashion_mnist

    monkeypatch.setattr(problems.nas.data, "DEBIAN_FASHION_MNIST", tmp_path / "no-package")
    data = tmp_path / "data"
    write_fashion_mnist(data / "FashionMNIST" / "raw", train=48, test=16)
    common = ["--dataset", "fashion-mnist", "--data-dir", str(data), "--image-size", "16"]
    out = tmp_path / "search"
    args = [*common, "--out", str(out), *TINY, "--batch-size", "8", "--max-steps", "2"]
    assert example().main(["search", *args]) == 0
    genotype = out / "genotype.json"
    assert Genotype.load(genotype)
    evaluation = tmp_path / "evaluate"
    code = example().main(
        [
            "evaluate",
            *common,
            "--genotype",
            str(genotype),
            "--out",
            str(evaluation),
            *("--layers", "2", "--init-channels", "4", "--batch-size", "16", "--epochs", "1"),
            *("--workers", "0", "--no-progress", "--no-download"),
        ]
    )
    assert code == 0
    records = [json.loads(x) for x in (evaluation / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["test_error"] in {k / 16 for k in range(17)}  # 16 test images


def test_fashion_mnist_offline_is_one_error_line_naming_the_package(tmp_path, monkeypatch, capsys):
    import problems.nas.data

    monkeypatch.setattr(problems.nas.data, "DEBIAN_FASHION_MNIST", tmp_path / "no-package")
    args = ["--small", "--dataset", "fashion-mnist", "--no-download", "--no-progress"]
    with pytest.raises(SystemExit) as stopped:
        example().main([*args, "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "dataset-fashion-mnist" in errors[0] and "--data-dir" in errors[0]
    assert not (tmp_path / "none").exists() and not (tmp_path / "o").exists()


def test_a_torchvision_built_for_another_torch_is_one_error_line(tmp_path):
    """torchvision's compiled operators fail to register against another torch, and its
    import raises deep inside torchvision; a stand-in package raising that error shadows
    the installed torchvision here."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n'
    )
    flags = ["--small", "--dataset", "cifar10", "--no-download", "--no-progress"]
    where = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *flags, *where, "--threads", "1"],
        capture_output=True,
        text=True,
        env={**subprocess_env(), "PYTHONPATH": str(tmp_path / "site")},
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1
    assert "does not work with torch" in errors[0] and "torchvision::nms" in errors[0]
    assert "pip install torch==" in errors[0]
