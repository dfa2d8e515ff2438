"""benchmarks/gpu_checks.sh: the GPU checks in one command. Without a GPU it still runs
every part, keeps each part's output in OUT and fails (the memory part needs CUDA)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ..scripts import ROOT, subprocess_env


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its real checks")
def test_without_a_gpu_every_part_runs_and_the_script_fails(tmp_path):
    env = {**subprocess_env(), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_checks.sh"), "gpu"],
        cwd=tmp_path,  # the script finds the checkout; OUT is relative to the caller
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "gpu"
    assert "no GPU" in (out / "versions.txt").read_text()
    assert "--device cuda needs a GPU" in (out / "memory.txt").read_text()
    assert "skipped" in (out / "tests.txt").read_text()
    for part, rc in (("versions", 0), ("memory", 2), ("tests", 0)):
        assert f"== {part}: exit {rc}" in done.stdout
