"""The LeaSE benchmark compares like with like: mlo and the hand-written iteration agree."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "lease_step.py"


def test_mlo_and_hand_written_lease_iterations_agree(monkeypatch):
    spec = importlib.util.spec_from_file_location("lease_step", PATH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # float64 everywhere, so that the finite differences agree far below an Adam step
    monkeypatch.setattr(
        bench, "DATA", {k: [(x.double(), y) for x, y in v] for k, v in bench.DATA.items()}
    )
    monkeypatch.setattr(bench, "STD", bench.STD.double())
    args = argparse.Namespace(layers=3, channels=4, pgd_steps=2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, arch_a = bench.mlo_version(args, True)
        hand, arch_b = bench.hand_version(args)
        start = [p.detach().clone() for p in arch_a.parameters()]
        for _ in range(2):
            ours()
            hand()
    finally:
        torch.set_default_dtype(previous)
    for a, b, s in zip(arch_a.parameters(), arch_b.parameters(), start):
        assert not torch.equal(a, s)
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
