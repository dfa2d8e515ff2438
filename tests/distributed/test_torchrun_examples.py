"""The examples under ``torchrun --standalone --nproc_per_node 2`` (gloo, CPU): each runs
end to end, rank 0 alone writes its outputs, and the checkpoint holds both ranks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ..scripts import ROOT, subprocess_env, tiny_nas

TINY_NAS = ["--small", *tiny_nas(max_steps=2, synthetic_size=64, threads=1)]


def torchrun(script: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(ROOT / "examples" / script), *args]
    env = {**subprocess_env(), "MLO_DISTRIBUTED_TIMEOUT_MINUTES": "2"}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False
    )


def replicated_parameters(checkpoint) -> dict[str, torch.Tensor]:
    """The parameters of the levels every rank holds (not LeaSE's explain level, whose
    perturbations are each rank's own examples')."""
    engine = torch.load(checkpoint, weights_only=True)["engine"]
    return {
        f"{name}.{key}": value
        for name, problem in engine["problems"].items()
        if name != "explain"
        for key, value in problem["module"].items()
        if value.is_floating_point()
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, extra",
    [
        ("lease_cifar.py", ["--audience", "resnet_tiny", "--explanation", "saliency"]),
        ("darts_cifar.py", []),
    ],
)
def test_a_nas_search_runs_on_two_ranks(script, extra, tmp_path):
    # With batch norm over both ranks' examples (--sync-bn), two ranks of batch 4 run the
    # search of one process with batch 8. (LeaSE with saliency explanations: PGD's random
    # start differs per rank; without it, see docs/concepts.md for what is measured.)
    extra = [*extra, "--sync-bn"]
    out = tmp_path / "out"
    result = torchrun(script, *TINY_NAS, "--batch-size", "4", *extra, "--out", str(out))
    assert result.returncode == 0, result.stderr[-8000:]
    one = tmp_path / "one"
    command = [sys.executable, str(ROOT / "examples" / script), *TINY_NAS, "--batch-size", "8"]
    alone = subprocess.run(
        [*command, *extra, "--out", str(one)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert alone.returncode == 0, alone.stderr[-8000:]
    ranks, single = (
        replicated_parameters(out / "checkpoint.pt"),
        replicated_parameters(one / "checkpoint.pt"),
    )
    assert ranks.keys() == single.keys()
    for key, value in single.items():
        assert torch.allclose(ranks[key], value, rtol=0, atol=1e-6), (
            key,
            (ranks[key] - value).abs().max(),
        )
    assert result.stdout.count("supernet val accuracy") == 1  # one summary, from rank 0
    for name in ("genotype.json", "metrics.jsonl", "checkpoint.pt", "alphas.png"):
        assert (out / name).is_file(), name
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # one writer
    engine = torch.load(out / "checkpoint.pt", weights_only=True)["engine"]
    assert engine["ranks"]["world"] == 2 and engine["tick"] == 2
    # Each rank read its own shard: the two current batches differ.
    first, second = next(iter(engine["ranks"]["batches"].values()))
    assert not torch.equal(first[0], second[0])


@pytest.mark.slow
def test_a_small_example_runs_on_two_ranks(tmp_path):
    out = tmp_path / "out"
    args = ["--steps", "3", "--seeds", "1", "--inner-steps", "2", "--no-progress", "--threads", "1"]
    result = torchrun("hyperparameter_optimization.py", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr[-8000:]
    assert result.stdout.count("grid choices") == 1
    checkpoint = out / "checkpoints" / "metrics_seed0" / "step_00000003.pt"
    engine = torch.load(checkpoint, weights_only=True)["engine"]
    assert engine["ranks"]["world"] == 2 and engine["tick"] == 3
