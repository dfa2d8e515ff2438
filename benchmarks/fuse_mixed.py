"""What ``CG(fuse_mixed=...)`` costs: cg's mixed products taken inside its Hessian-vector
products' passes (``True``), as one more pass after its iterations (``False``), and the
default ``"auto"``, which chooses on a level's first solve from an operation count.

Two programs where the choice goes opposite ways, each one process, rounds interleaving
the three settings (after ``--warmup`` ticks each, two by default; ``"auto"`` has chosen
after the first):

- ``quadratic``: the two-level tick of ``benchmarks/overhead.py`` (n = 2000, cg with
  K = 3): the parent enters the lower objective through a dense n × n matrix, so each
  mixed part is a matrix-vector product beside an elementwise Hessian-vector product;
- ``supernet``: the DARTS search of ``benchmarks/memory.py`` (3 cells, 8 channels, batch
  16, 16×16 images, cg(5)): the architecture weights scale each operation's output, so
  the mixed part adds almost nothing to a product;
- ``lease``: LeaSE's four levels on that supernet (``benchmarks/memory.py --network
  lease``), cg(5) on the explainer and the audience.

The script prints the median time per tick, the medians of the paired ratios to
``False``, and what ``"auto"`` chose.

    python benchmarks/fuse_mixed.py [--rounds 300] [--supernet-rounds 8] [--lease-rounds 4]
        [--warmup 2] [--n 2000]
        [--layers 3] [--channels 8] [--batch 16] [--size 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlo

SETTINGS = (False, True, "auto")


def quadratic(fuse, args):
    """The overhead benchmark's tick, with cg's ``fuse_mixed=fuse``."""
    import overhead

    solver = mlo.solvers.CG(iterations=overhead.K, tol=0.0, fuse_mixed=fuse)
    step, _ = overhead.mlo_step(solver, args.n)
    return step


def search(network: str):
    """The memory benchmark's DARTS search (``"darts"``) or LeaSE on the same supernet
    (``"lease"``: cg on the explainer and the audience), cg(5) with ``fuse_mixed``."""

    def build(fuse, args):
        from memory import _supernet, search_levels

        args.network = network
        net, arch, train, val, gen = _supernet(args)
        solver = mlo.solvers.CG(iterations=5, fuse_mixed=fuse)
        problems, deps = search_levels(net, arch, train, val, args, gen, solver)
        return mlo.Engine(problems, deps, mlo.EngineConfig(progress=False)).step

    return build


def chosen(step) -> str:
    """What ``"auto"`` chose on the program's cg level (``step`` is its engine's)."""
    engine = step.__self__
    picks = {v for memo in engine.hypergradients.memos.values() for v in memo.values()}
    return {frozenset({True}): "fused", frozenset({False}): "separate"}.get(
        frozenset(picks), "both"
    )


def measure(build, args, rounds: int) -> tuple[dict, dict, str]:
    steps = {fuse: build(fuse, args) for fuse in SETTINGS}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict = {fuse: [] for fuse in SETTINGS}
    for _ in range(rounds):
        for fuse, step in steps.items():
            start = time.perf_counter()
            step()
            times[fuse].append(time.perf_counter() - start)
    median = {f: 1e3 * statistics.median(t) for f, t in times.items()}
    base = times[False]
    ratio = {f: statistics.median(a / b for a, b in zip(t, base)) for f, t in times.items()}
    return median, ratio, chosen(steps["auto"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="rounds of the quadratic")
    parser.add_argument("--supernet-rounds", type=int, default=8)
    parser.add_argument("--lease-rounds", type=int, default=4)
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed ticks of each setting first (at least 1)"
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args()
    for name in (
        "rounds",
        "supernet_rounds",
        "lease_rounds",
        "warmup",
        "n",
        "layers",
        "channels",
        "batch",
        "size",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.device = "cpu"
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, 1 thread; quadratic n = {args.n}, {args.rounds} "
        f"rounds; supernet {args.layers} cells x {args.channels} channels, batch "
        f"{args.batch}, {args.size}x{args.size}, {args.supernet_rounds} rounds; LeaSE on "
        f"it, {args.lease_rounds} rounds; ms per tick, and the medians of the paired "
        "ratios to fuse_mixed=False"
    )
    print("program      separate     fused      auto   fused×   auto×   auto chose")
    for name, build, rounds in (
        ("quadratic", quadratic, args.rounds),
        ("supernet", search("darts"), args.supernet_rounds),
        ("lease", search("lease"), args.lease_rounds),
    ):
        median, ratio, pick = measure(build, args, rounds)
        print(
            f"{name:10s} {median[False]:9.2f} {median[True]:9.2f} {median['auto']:9.2f} "
            f"{ratio[True]:7.3f}× {ratio['auto']:6.3f}×   {pick}"
        )


if __name__ == "__main__":
    main()
