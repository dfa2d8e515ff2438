"""What exact nested hypergradients cost: ``jacobian="total"`` against ``"partial"`` on a
3-level chain of small MLPs whose middle level reads its lower level.

    lower   W_c:  f_c = mean((g_c(x) + 0.3·g_b(x))²)            (reads b, its parent)
    middle  W_b:  f_b = mean((g_b(x)·g_a(x) − 1)²) + mean(g_c(x)²)   reads c, its lower level
    top     W_a:  f_a = mean((g_b(x) − ½)²) + mean(g_c(x)²)

Each g is a 2-layer tanh MLP (``--width`` hidden units) on a batch of 32 inputs of size
8; every level is trained by SGD, the Jacobians by ``cg`` with ``--iterations`` steps.
One engine tick updates c, b, then a; in ``total`` mode b's Jacobian (used in a's update)
is built from b's total gradient, whose Hessian-vector products each solve c's system
again. Rounds alternate between the modes; the script prints the median ms per tick and
the median of the paired ratios total / partial.

    python benchmarks/nested.py [--rounds 30] [--iterations 5] [--width 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import mlo


def mlp(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 1))


class Lower(mlo.Problem):
    def training_step(self, x):
        return ((self.module(x) + 0.3 * self.middle.module(x)) ** 2).mean()


class Middle(mlo.Problem):
    def training_step(self, x):
        return ((self.module(x) * self.top.module(x) - 1) ** 2).mean() + (
            self.lower.module(x) ** 2
        ).mean()


class Top(mlo.Problem):
    def training_step(self, x):
        return ((self.middle.module(x) - 0.5) ** 2).mean() + (self.lower.module(x) ** 2).mean()


def engine(jacobian: str, args) -> mlo.Engine:
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(32, 8, generator=gen) for _ in range(4)]
    solver = mlo.solvers.CG(iterations=args.iterations, tol=0.0)
    problems = []
    for i, (cls, name) in enumerate(((Top, "top"), (Middle, "middle"), (Lower, "lower"))):
        module = mlp(args.width, i)
        config = mlo.ProblemConfig(solver=solver, jacobian=jacobian)
        opt = torch.optim.SGD(module.parameters(), lr=0.05)
        problems.append(cls(name, module, opt, data=data, config=config))
    return mlo.Engine(
        problems,
        {"top": ["middle", "lower"], "middle": ["lower"]},
        mlo.EngineConfig(progress=False),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=5, help="CG steps per solve")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = {mode: engine(mode, args) for mode in ("partial", "total")}
    assert engines["total"].hypergradients.modes.nested("middle")
    assert not engines["partial"].hypergradients.modes.nested("middle")
    times: dict[str, list[float]] = {mode: [] for mode in engines}
    for i in range(args.warmup + args.rounds):
        for mode, e in engines.items():
            start = time.perf_counter()
            e.step()
            if i >= args.warmup:
                times[mode].append(time.perf_counter() - start)
    ratios = [t / p for t, p in zip(times["total"], times["partial"])]
    print(
        f"3-level chain of tanh MLPs (width {args.width}), cg with {args.iterations} steps, "
        f"{args.rounds} rounds, torch {torch.__version__}, {args.threads} thread(s)"
    )
    for mode, values in times.items():
        print(f"{mode:8s} {1e3 * statistics.median(values):8.2f} ms/tick")
    print(f"total / partial: {statistics.median(ratios):.2f}× (median of paired ratios)")


if __name__ == "__main__":
    main()
