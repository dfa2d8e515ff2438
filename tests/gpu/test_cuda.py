"""On a GPU: hypergradients on CUDA equal the CPU's in float64, and the examples run
with bfloat16 autocast and channels_last. Skipped without CUDA (needs a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

from mlo.autodiff.grouped_conv import grouped_double_backward
from problems.nas.evaluation import MobileNetwork
from problems.nas.genotype import DARTS_V2

from ..mlo.quadratic import DTYPE, QuadraticSpec
from ..mlo.test_grouped_conv import GEOMETRIES, second_order
from ..scripts import ROOT, tiny_nas

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

DIMS = {"a": 3, "b": 4, "c": 2, "d": 3}
DEPS = {"a": ["b", "c"], "b": ["c", "d"], "c": ["d"]}


def spec_on(device: torch.device) -> QuadraticSpec:
    spec = QuadraticSpec(DIMS, DEPS, seed=4)
    for table in (spec.A, spec.c, spec.B, spec.Q, spec.q):
        for key, value in table.items():
            table[key] = value.to(device)
    return spec


@pytest.mark.parametrize("solver", ["cg", "neumann", "darts", "first_order"])
def test_hypergradients_on_cuda_equal_the_cpu_ones(solver):
    results = {}
    for device in (torch.device("cpu"), torch.device("cuda")):
        spec = spec_on(device)
        gen = torch.Generator().manual_seed(5)
        init = {n: torch.randn(d, generator=gen, dtype=DTYPE).to(device) for n, d in DIMS.items()}
        values = spec.solve_lowers(init)
        engine = spec.build(solver, values)
        for p in engine.problems.values():
            p.module.to(device)
        results[device.type] = {top: engine.hypergradient(top)["x"] for top in ("a", "b")}
        if solver == "cg":
            truth = spec.total_derivative("a", values)
            error = (results[device.type]["a"] - truth).norm() / truth.norm()
            assert error < 1e-8
    for top in ("a", "b"):
        assert results["cuda"][top].device.type == "cuda"
        torch.testing.assert_close(
            results["cuda"][top].cpu(), results["cpu"][top], rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("script", ["lease_cifar.py", "darts_cifar.py"])
def test_the_search_runs_on_cuda_with_bf16_and_channels_last(script, tmp_path):
    out = tmp_path / "run"
    flags = tiny_nas(max_steps=3, device="cuda", out=out)
    command = [sys.executable, str(ROOT / "examples" / script), *flags, "--amp", "--channels-last"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3
    for value in records[-1]["loss"].values():
        assert torch.isfinite(torch.tensor(value))


def test_the_mobile_network_trains_on_cuda_in_bf16():
    torch.manual_seed(0)
    net = MobileNetwork(DARTS_V2, num_classes=10).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, aux = net(x)
    assert logits.shape == aux.shape == (4, 10)
    loss = logits.float().logsumexp(1).mean() + aux.float().logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_products_without_a_kept_graph_hold_less_gpu_memory_than_the_retained_graph():
    """benchmarks/memory.py on the GPU (torch.cuda.max_memory_allocated): cg's products by
    forward-over-reverse and from a graph built for each hold less than reverse mode's
    retained graph, as on the CPU."""
    sizes = ["--layers", "2", "--channels", "8", "--batch", "16", "--size", "16"]
    command = [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--device", "cuda"]
    configs = ["plain", "cg", "cg-forward", "cg-recompute"]
    command += [*sizes, "--rounds", "1", "--ticks", "2", "--only", *configs]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {
        line.split()[0]: float(line.split()[1])
        for line in done.stdout.splitlines()
        if line.split() and line.split()[0] in configs
    }
    assert rows["plain"] > 0 and rows["cg-forward"] < rows["cg"], done.stdout
    assert rows["cg-recompute"] < rows["cg"], done.stdout


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_grouped_convolutions_double_backward_on_cuda_is_pytorchs(geometry):
    """``mlo.autodiff.grouped_conv`` on CUDA (the weight's gradient by PyTorch's kernel
    there): first and second derivatives equal to PyTorch's own in float64."""
    ours = second_order(geometry, True, "xwb", grouped_double_backward, "cuda")
    truth = second_order(geometry, True, "xwb", nullcontext, "cuda")
    for a, t in zip(ours, truth):
        assert torch.allclose(a, t, rtol=1e-12, atol=1e-12 * float(t.abs().max()))
