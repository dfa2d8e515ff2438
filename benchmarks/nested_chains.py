"""Exact hypergradients of deep nested chains: ``jacobian="total"`` against
``jacobian="one_system"``, time and error per ``hypergradient()``.

Coupled nested quadratic chains (``tests/mlo/nested_quadratic.py``: every level reads its
lower levels, 3 entries a level, float64) of 3 to 6 levels, at the nested best response;
``cg`` with ``--cg`` steps (and its default tolerance) on every lower level, the middle
levels in each mode. The truth is autograd through the nested responses. Each row runs
in a fresh process (its peak resident set is its own), stopped past ``--limit`` seconds
(then not timed deeper). Then ``neumann`` with ``--neumann`` terms on a 3-level chain in
both modes. Prints the seconds of one call (the median of ``--rounds``), the relative
error and the peak resident set.

    python benchmarks/nested_chains.py [--rounds 3] [--cg 140] [--neumann 400] [--limit 60]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import mlo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.mlo.nested_quadratic import NestedQuadraticSpec  # noqa: E402
from tests.mlo.quadratic import DTYPE  # noqa: E402


def chain(levels: int, solver, mode: str):
    names = [f"l{k}" for k in range(levels)]
    deps = {names[k]: [names[k + 1]] for k in range(levels - 1)}
    spec = NestedQuadraticSpec({n: 3 for n in names}, deps, seed=levels)
    gen = torch.Generator().manual_seed(levels)
    values = spec.solve_lowers({n: torch.randn(3, generator=gen, dtype=DTYPE) for n in names})
    engine = spec.build(solver, values, jacobian=mode)
    truth = spec.total_derivative(names[0], values)
    return engine, names[0], truth


def measure(engine, top: str, truth: torch.Tensor, rounds: int) -> tuple[float, float]:
    times, got = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        got = engine.hypergradient(top)["x"]
        times.append(time.perf_counter() - start)
    return statistics.median(times), float((got - truth).norm() / truth.norm())


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(levels: int, solver: str, mode: str, args) -> dict:
    torch.set_num_threads(1)
    if solver == "cg":
        made = mlo.solvers.CG(iterations=args.cg)
    else:
        made = mlo.solvers.Neumann(iterations=args.neumann, alpha=0.2)
    engine, top, truth = chain(levels, made, mode)
    seconds, error = measure(engine, top, truth, args.rounds)
    return {"seconds": seconds, "error": error, "peak": peak_mib()}


def run(levels: int, solver: str, mode: str, args) -> dict | None:
    """One measurement in a fresh process (its own peak memory); ``None`` past the limit."""
    command = [sys.executable, __file__, "--child", str(levels), solver, mode]
    command += ["--rounds", str(args.rounds), "--cg", str(args.cg), "--neumann", str(args.neumann)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.limit, check=True, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cg", type=int, default=140, help="cg steps (MINRES steps, one_system)")
    parser.add_argument("--neumann", type=int, default=400, help="Neumann terms")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds a measurement may take")
    parser.add_argument("--max-levels", type=int, default=6)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        levels, solver, mode = args.child
        print(json.dumps(child(int(levels), solver, mode, args)))
        return
    print(
        f"coupled nested chains, 3 entries a level, float64, torch {torch.__version__}, "
        f"1 thread, a fresh process per row, median of {args.rounds}"
    )
    print("levels   solver         mode          s/hypergradient   relative error   peak MiB")
    rows = [(n, "cg", mode) for n in range(3, args.max_levels + 1) for mode in MODES]
    rows += [(3, "neumann", mode) for mode in MODES]
    stopped: set[tuple[str, str]] = set()
    for levels, solver, mode in rows:
        name = f"{solver}({args.cg if solver == 'cg' else args.neumann})"
        found = None if (solver, mode) in stopped else run(levels, solver, mode, args)
        if found is None:
            stopped.add((solver, mode))  # deeper is slower still
            over = f"over {args.limit:g}s"
            print(f"{levels:6d}   {name:13s}  {mode:12s}  {over:>15}   {'-':>14}   {'-':>8}")
            continue
        print(
            f"{levels:6d}   {name:13s}  {mode:12s}  {found['seconds']:15.3f}   "
            f"{found['error']:14.1e}   {found['peak']:8.0f}",
            flush=True,
        )


MODES = ("total", "one_system")


if __name__ == "__main__":
    main()
