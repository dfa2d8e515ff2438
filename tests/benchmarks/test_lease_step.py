"""The LeaSE benchmark compares like with like: mlo and the hand-written iteration agree."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from ..scripts import load_script

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "lease_step.py"


def test_mlo_and_hand_written_lease_iterations_agree(monkeypatch):
    bench = load_script(PATH)
    # float64 everywhere, so that the finite differences agree far below an Adam step;
    # 8x8 crops of the benchmark's images, to take a quarter of the time
    monkeypatch.setattr(
        bench,
        "DATA",
        {k: [(x.double(), y) for x, y in v] for k, v in small(bench, monkeypatch).items()},
    )
    monkeypatch.setattr(bench, "STD", bench.STD.double())
    args = argparse.Namespace(layers=3, channels=4, pgd_steps=2, audience="resnet_tiny")
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


def small(bench, monkeypatch) -> dict:
    """The benchmark's batches cropped to 8x8 pixels (and its image size set to it)."""
    monkeypatch.setattr(bench, "SIZE", 8)
    return {k: [(x[..., :8, :8].contiguous(), y) for x, y in v] for k, v in bench.DATA.items()}


def passes(bench, factory, args) -> tuple[int, int, object]:
    step, arch = factory(args)
    step()
    supernet, audience, backward, heap = [], [], [], []
    with bench.counting_passes(supernet, audience, backward, heap):
        step()
    return len(supernet), len(audience), arch


def test_betty_wiring_recomputes_the_explanations_and_mlo_does_not(monkeypatch):
    """The Betty comparison is structural: with k PGD steps, Betty's SANAS wiring runs the
    attack five times an iteration (the audience's step, and twice on each of the paths
    relearn → audience → relearn and relearn → audience → explainer → relearn), mlo once."""
    pytest.importorskip("betty", reason="the comparison needs betty-ml (the dev extra)")
    bench = load_script(PATH)
    monkeypatch.setattr(bench, "DATA", small(bench, monkeypatch))
    k = 2
    args = argparse.Namespace(layers=3, channels=4, pgd_steps=k, audience="resnet_tiny")
    supernet, audience, _ = passes(bench, bench.VERSIONS["mlo-sign"], args)
    # explainer step, explain (k), relearn loss, darts ± through the explainer
    assert (supernet, audience) == (k + 4, 3)
    supernet, audience, arch = passes(bench, bench.VERSIONS["betty"], args)
    # explainer step, 5 attacks, relearn loss, darts ± through the explainer twice
    assert (supernet, audience) == (5 * k + 6, 11)
    assert all(torch.isfinite(p).all() for p in arch.parameters())
    supernet, audience, _ = passes(bench, bench.VERSIONS["betty-light"], args)
    assert (supernet, audience) == (3 * k + 4, 7)
