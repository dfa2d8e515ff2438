"""Depth: ms per tick of a dense chain of n levels, mlo in both Jacobian modes against
Betty, n = 2 … 7.

Level k (0 = top) has a vector ``x_k`` of ``--dim`` entries and the quadratic objective

    f_k = ½‖x_k‖² + x_kᵀ Σ_{j≠k} B_kj x_j / n

so every level reads every other level; the graph is dense (each level is an upper of
every level below it), so the top reaches level k along 2^(k−1) paths. Every lower level
uses ``darts`` (ε = 0.01) and SGD. mlo runs twice: with ``jacobian="total"`` (every
middle level reads its lower levels, so its Jacobian is the exact nested one) and with
``jacobian="partial"`` — darts' default, and the Jacobian Betty computes — so that mlo and Betty
compute the same kind of hypergradient: mlo by adjoint propagation (one solver call per
edge group), Betty by enumerating paths. Rounds alternate between the versions at each
depth; the script prints the median ms per tick, the medians of the paired ratios
Betty / mlo, and writes a log-scale plot. The exact mode's cost compounds with depth
(docs/concepts.md, "What exactness costs"): where its first tick takes more than
``--total-limit`` seconds (it is stopped there), it is not timed at that depth or
deeper, and the engine's own estimate of the exact/partial ratio is printed instead.

    python benchmarks/depth.py [--max-levels 7] [--rounds 15] [--plot docs/depth.png]

``--memory N`` instead measures the peak resident set of ``--rounds`` ticks at N levels,
each version in a fresh process: mlo under its defaults, and Betty.
"""

from __future__ import annotations

import argparse
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import mlo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log_plot, quiet_betty

LR, EPSILON = 0.05, 0.01


class Vec(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(value.clone())


def coefficients(n: int, dim: int):
    gen = torch.Generator().manual_seed(n)
    b = {
        (k, j): torch.randn(dim, dim, generator=gen) / dim**0.5 for k in range(n) for j in range(n)
    }
    start = [torch.randn(dim, generator=gen) for _ in range(n)]
    return b, start


def objective(k: int, values: list[torch.Tensor], b) -> torch.Tensor:
    n = len(values)
    x = values[k]
    coupled = sum(b[(k, j)] @ values[j] for j in range(n) if j != k)
    return 0.5 * x @ x + x @ coupled / n


def names(n: int) -> list[str]:
    return [f"l{k}" for k in range(n)]


def mlo_step(n: int, dim: int, jacobian: str | None = "partial"):
    b, start = coefficients(n, dim)
    level_names = names(n)

    class Level(mlo.Problem):
        index = 0

        def training_step(self, batch):
            values = [
                self.module.v if m == self.name else getattr(self, m).module.v for m in level_names
            ]
            return objective(self.index, values, b)

    problems = []
    for k, name in enumerate(level_names):
        module = Vec(start[k])
        config = mlo.ProblemConfig(solver=mlo.solvers.Darts(epsilon=EPSILON), jacobian=jacobian)
        p = Level(name, module, torch.optim.SGD(module.parameters(), lr=LR), config=config)
        p.index = k
        problems.append(p)
    deps = {level_names[k]: level_names[k + 1 :] for k in range(n - 1)}
    engine = mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))
    return engine.step


def betty_step(n: int, dim: int):
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    quiet_betty()
    b, start = coefficients(n, dim)
    level_names = names(n)
    problems = {}

    class Level(ImplicitProblem):
        index = 0

        def training_step(self, batch):
            values = [problems[m].module.v for m in level_names]
            return objective(self.index, values, b)

    data = [torch.zeros(1)]
    for k, name in enumerate(level_names):
        module = Vec(start[k])
        config = (
            Config(first_order=True, retain_graph=True)
            if k == 0
            else Config(type="darts", darts_alpha=EPSILON, retain_graph=True)
        )
        p = Level(
            name,
            config,
            module=module,
            optimizer=torch.optim.SGD(module.parameters(), lr=LR),
            train_data_loader=data,
            device="cpu",
        )
        p.index = k
        problems[name] = p
    ordered = [problems[m] for m in level_names]
    u2l = {ordered[k]: ordered[k + 1 :] for k in range(n - 1)}
    l2u = {ordered[j]: ordered[:j] for j in range(1, n)}
    engine = Engine(
        ordered,
        config=EngineConfig(train_iters=1, logger_type="none"),
        dependencies={"u2l": u2l, "l2u": l2u},
    )

    def step() -> None:
        engine.global_step += 1
        engine.train_step()

    return step


class TooSlow(Exception):
    pass


def finishes(step, seconds: float) -> bool:
    """Whether one call of ``step`` ends within ``seconds`` (it is stopped otherwise;
    an autograd pass already running ends first)."""

    def stop(*_):
        raise TooSlow

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        step()
        return True
    except TooSlow:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def estimated_ratio(n: int) -> float:
    """The engine's estimate of the exact/partial time ratio of one tick (nothing runs)."""
    engine = mlo_step(n, 4, "total").__self__
    return engine.hypergradients.cost.ratio({name: 1 for name in engine.problems})


def peak_of(version: str, n: int, dim: int, ticks: int) -> None:
    """Run ``ticks`` ticks of ``version`` ("default": mlo's defaults; "Betty") at ``n``
    levels in this process and print its peak resident set in MiB."""
    step = mlo_step(n, dim, None) if version == "default" else betty_step(n, dim)
    for _ in range(ticks):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory(n: int, dim: int, ticks: int, threads: int) -> None:
    coefficients_mib = n * n * dim * dim * 4 / 2**20
    print(
        f"dense chain of {n} levels, dim {dim}, {ticks} ticks, peak resident set of a fresh "
        f"process (torch's own included; the chain's coefficients alone {coefficients_mib:.0f} MiB)"
    )
    for version in ("default", "Betty"):
        done = subprocess.run(
            [
                *(sys.executable, __file__, "--peak-of", version, "--max-levels", str(n)),
                *("--dim", str(dim), "--rounds", str(ticks), "--threads", str(threads)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        name = "mlo, defaults" if version == "default" else "Betty 0.1.1"
        print(f"{name}: {float(done.stdout.split()[-1]):.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-levels", type=int, default=7)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--total-limit", type=float, default=2.0)
    parser.add_argument("--plot", type=Path, help="write a log-scale PNG of the curves")
    parser.add_argument("--memory", type=int, metavar="N", help="peak memory at N levels")
    parser.add_argument("--peak-of", choices=["default", "Betty"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of is not None:
        return peak_of(args.peak_of, args.max_levels, args.dim, args.rounds)
    if args.memory is not None:
        return memory(args.memory, args.dim, args.rounds, args.threads)
    print(
        f"dense chain, dim {args.dim}, darts, {args.rounds} rounds, torch {torch.__version__}, "
        f"{args.threads} thread(s)"
    )
    print(
        "levels   "
        + "total ms/tick".rjust(24)
        + "   partial ms/tick   Betty ms/tick   Betty/total   Betty/partial"
    )
    rows = []
    slow = False
    for n in range(2, args.max_levels + 1):
        versions = {"partial": mlo_step(n, args.dim), "Betty": betty_step(n, args.dim)}
        if not slow:
            total_step = mlo_step(n, args.dim, "total")
            slow = not finishes(total_step, args.total_limit)
            if not slow:
                versions["total"] = total_step
        times: dict[str, list[float]] = {k: [] for k in versions}
        for i in range(args.warmup + args.rounds):
            for name, step in versions.items():
                start = time.perf_counter()
                step()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        ratio = {
            k: statistics.median(b / m for b, m in zip(times["Betty"], times[k])) for k in times
        }
        if slow:
            total = f"(estimate {estimated_ratio(n):.0f}x partial)"
            betty_total = "-"
        else:
            total, betty_total = f"{ms['total']:.2f}", f"{ratio['total']:.2f}"
        rows.append((n, ms.get("total"), ms["partial"], ms["Betty"]))
        print(
            f"{n:6d}   {total:>24}   {ms['partial']:15.2f}   {ms['Betty']:13.2f}   "
            f"{betty_total:>11}   {ratio['partial']:13.2f}",
            flush=True,
        )
    if args.plot is not None:
        timed = [r for r in rows if r[1] is not None]
        curves = {
            "mlo, partial (adjoints)": [r[2] for r in rows],
            "Betty 0.1.1 (paths)": [r[3] for r in rows],
        }
        log_plot(
            args.plot,
            [r[0] for r in rows],
            curves,
            "levels in the dense chain",
            "ms per tick",
            extra={"mlo, total (exact)": ([r[0] for r in timed], [r[1] for r in timed])},
        )
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
