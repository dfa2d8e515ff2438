"""The benchmark compares like with like: mlo and the hand-written step do the same math."""

from __future__ import annotations

from pathlib import Path

import torch

from ..scripts import load_script

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "darts_step.py"


def test_mlo_and_hand_written_darts_steps_agree():
    bench = load_script(PATH)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen))
        for _ in range(3)
    ]
    train, val = batches[:2], batches[1:]
    ours, hand = bench.mlo_step(train, val), bench.hand_step(train, val)
    for _ in range(3):
        ours()
        hand()
    assert not torch.equal(ours.arch.alpha, bench.make_models(0)[1].alpha)  # it moved
    assert torch.allclose(ours.arch.alpha, hand.arch.alpha, rtol=1e-4, atol=1e-6)
    for a, b in zip(ours.net.parameters(), hand.net.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_supernet_benchmark_versions_agree():
    import argparse

    bench = load_script(PATH.parent / "nas_search_step.py")
    args = argparse.Namespace(layers=3, channels=4, amp=False, channels_last=False)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64),
            torch.randint(0, 10, (2,), generator=gen),
        )
        for _ in range(3)
    ]
    device = torch.device("cpu")
    # float64, so that the finite differences agree to far below an Adam step
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, (_, arch_a) = bench.mlo_version(args, device, batches[:2], batches[1:])
        hand, (_, arch_b) = bench.hand_version(args, device, batches[:2], batches[1:])
    finally:
        torch.set_default_dtype(previous)
    start = [p.detach().clone() for p in arch_a.parameters()]
    for _ in range(2):
        ours()
        hand()
    for a, b, s in zip(arch_a.parameters(), arch_b.parameters(), start):
        assert not torch.equal(a, s)
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
