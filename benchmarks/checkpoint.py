"""Time and size of an engine checkpoint for the default LeaSE search (8-cell, 16-channel
supernet, ResNet-18 audience, batch 64), after one tick so that optimizer states exist.

    python benchmarks/checkpoint.py [--rounds 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import mlo
from problems.lease import ExplanationConfig, LeaseHyper, build
from problems.nas import ArchitectureWeights, Supernet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)

    supernet, arch = Supernet(10, 8, 16), ArchitectureWeights()
    # one PGD step and first_order solvers: the tick only has to create optimizer states
    hyper = LeaseHyper(
        explanation=ExplanationConfig(steps=1),
        explainer_solver="first_order",
        audience_solver="first_order",
        explain_solver="first_order",
    )
    problems, deps = build(
        supernet,
        arch,
        *(random_batches(1, args.batch, 32, gen) for _ in range(3)),
        num_classes=10,
        batch_size=args.batch,
        total_updates=1000,
        hyper=hyper,
    )
    engine = mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))
    engine.step()
    times = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        for _ in range(args.rounds):
            start = time.perf_counter()
            engine.save(path)
            times.append(time.perf_counter() - start)
        size = path.stat().st_size
        start = time.perf_counter()
        engine.load(path)
        load = time.perf_counter() - start
    params = {
        n: sum(p.numel() for p in pr.module.parameters()) for n, pr in engine.problems.items()
    }
    print(f"default LeaSE checkpoint: parameters {params}")
    print(
        f"  size {size / 2**20:.1f} MiB, save median {1e3 * statistics.median(times):.0f} ms "
        f"(atomic: temporary file, fsync, rename), load {1e3 * load:.0f} ms"
    )


if __name__ == "__main__":
    main()
