"""Run the CPU benchmark suite and write its page, ``docs/benchmarks.md``.

Each benchmark is its own script (run here as a child process, as a user would run it):
it runs the compared versions interleaved in one process and prints medians of paired
ratios, so that a noisy machine does not decide a result. This script runs them one after
the other, then writes one page with the machine, the library versions, the date, the
command that reproduces each table, each script's output as printed, and the plots.
Nothing is written unless every script succeeds.

    python benchmarks/suite.py                 # the full suite, about 7 minutes on 2 cores
    python benchmarks/suite.py --only overhead depth   # rerun two; the other sections stay
    python benchmarks/suite.py --quick --out /tmp/bench   # a smoke run in a minute
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    script: str
    what: str
    args: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    plots: tuple[str, ...] = ()  # its PNGs: --plot names the first, the script the rest


# memory.py at tiny sizes (--quick): one fresh process each for the plain step and darts.
TINY_SUPERNET = ["--rounds", "1", "--ticks", "1", "--layers", "1", "--channels", "4"]
TINY_SUPERNET += ["--batch", "4", "--size", "8", "--only", "plain", "darts"]
TINY_FUSE = ["--rounds", "3", "--supernet-rounds", "1", "--lease-rounds", "1", "--n", "64"]
TINY_FUSE += ["--layers", "1"]
TINY_FUSE += ["--channels", "4", "--batch", "4", "--size", "8"]

SUITE = [
    Benchmark(
        "overhead",
        "Per-update overhead: a tiny two-level tick",
        "overhead.py",
        "Two 2000-dimensional quadratic levels, one SGD step each per tick, every solver: "
        "the engine's bookkeeping shows here, since the arithmetic is cheap. Floor: the same "
        "math hand-written with the same autograd calls.",
        ["--rounds", "200"],
        ["--rounds", "3", "--n", "64"],
    ),
    Benchmark(
        "depth",
        "Depth: dense chains of 2 to 7 levels",
        "depth.py",
        "Every level reads every other, `darts` everywhere: mlo in both Jacobian modes"
        " (the exact `total`, and `partial`: darts' default, and Betty's "
        "approximation) against Betty's path enumeration, ms per tick. With `partial`,"
        " mlo's adjoint propagation grows polynomially with depth and Betty's path "
        "enumeration exponentially. `total` is exact and compounds with the depth of "
        "the nesting: slower than Betty from 3 levels on, and past 5 levels its first "
        'tick does not end within the limit (docs/concepts.md, "What exactness costs";'
        " the engine warns before that tick). Memory at 7 levels, `python "
        "benchmarks/depth.py --memory 7 --dim 2000 --rounds 5` (5 ticks in a fresh "
        "process each, peak resident set, torch's own about 520 MiB and the chain's 49"
        " coefficient matrices 748 MiB included): mlo under its defaults 1,427 MiB, "
        "Betty 0.1.1 2,156 MiB.",
        ["--dim", "2000", "--rounds", "15", "--total-limit", "10"],
        ["--max-levels", "3", "--rounds", "2", "--warmup", "0", "--dim", "8"],
        plots=("depth.png",),
    ),
    Benchmark(
        "nested_chains",
        "Exact hypergradients of deep nested chains",
        "nested_chains.py",
        "Coupled nested quadratic chains (every level reads its lower levels, 3 entries a "
        "level, float64) of 3 to 6 levels, `cg` with 140 steps, and `neumann` with 400 terms "
        'at 3 levels: the exact Jacobians by `jacobian="total"` (products of total '
        'gradients, whose solves nest) and by `jacobian="one_system"` (one MINRES solve per '
        'level of the chain below, docs/concepts.md, "The one-system solve"), seconds per '
        "`hypergradient()`, error against the nested truth, and each fresh process's peak "
        "resident set (torch's own included).",
        ["--limit", "60"],
        ["--max-levels", "3", "--cg", "10", "--neumann", "10", "--rounds", "1"],
    ),
    Benchmark(
        "memory",
        "Peak memory per solver against a plain training step",
        "memory.py",
        (
            "The DARTS supernet (3 cells, 8 channels, batch 16, 16×16 images), CPU: peak "
            "resident growth of 3 ticks over the state before the first, in fresh processes, "
            "for each solver on the supernet level and `unroll` at K = 1, 2, 4, 8, against "
            "the supernet's own training step (forward, backward, optimizer step); `live` is "
            "the most bytes of tensors alive at once in one more tick (the profiler's "
            "allocations and frees), free of the allocator's caching, as "
            "`torch.cuda.max_memory_allocated` is on a GPU (`--device cuda`). `darts` and "
            "`sama` (two gradients) hold 1.14× the plain step's resident peak; `cg(5)` and "
            '`neumann(5)` 2.9× (3.0× live) in the default `hvp="auto"`, which takes '
            "reverse-mode products: the gradient's graph, kept for all the products, and the "
            "temporaries of a double backward through it. `cg` takes each direction's mixed "
            'product in its Hessian-vector product\'s double backward (`fuse_mixed="auto"` '
            "chooses it here: the architecture weights add 0.3 % to a product's operations) "
            "instead of one more pass for the mixed product of its solution: 13.01× the "
            "plain step's time against 14.08× with `-separate` (`fuse_mixed=False`), at the "
            "same memory (2.94× and 2.88× resident, 3.03× and 3.04× live); neumann's series "
            "ends on a term whose mixed product no product gives, so it keeps that pass "
            "(14.69×). Reverse-mode products (and recompute's, and `unroll`'s replayed "
            "steps) evaluate the objective with grouped convolutions whose double backward "
            "takes each term in one call (`mlo.autodiff.grouped_conv`; PyTorch's routine "
            "takes the weight's term one group at a time, and the supernet's separable and "
            "dilated convolutions are depthwise): in a run of 2026-12-07 with PyTorch's "
            "routine `cg` took 16.34×, `neumann` 18.45× and `-recompute` 22.96× the plain "
            "step, at the same memory. `-forward` is the same solver with "
            '`ProblemConfig(hvp="forward")`: each product one forward-over-reverse pass, '
            "with each operation's tangent cut from the graph that computed it, what "
            "autograd saves held detached (an operation's output saved as it is keeps its "
            "uncut tangent and that graph), and only what the product differentiates "
            "requiring gradients. It holds 2.14× and 2.12× the plain step's resident peak, "
            "1.98× and 1.97× its live tensors (the forward's saved activations and their "
            "tangents), at 2.34× and 1.97× reverse mode's time (cg's reverse mode being the "
            "fused one), since each product repeats the forward and backward pass that "
            "reverse mode takes once (and its convolutions are PyTorch's, which have "
            "forward-mode rules), and it cannot fuse cg's mixed products at that memory (the "
            "parents requiring gradients in every product hold 2.9× live). `-recompute` "
            '(`ProblemConfig(hvp="recompute")`) keeps only the forward\'s graph: it evaluates '
            "the objective once for a solve's Hessian-vector products and builds the "
            "gradient's graph from it again for each product, which the product's double "
            "backward frees as it goes; its mixed product is one forward-over-reverse pass "
            "(the architecture differentiated, the supernet's weights carrying the vector as "
            "their tangent), which holds 0.82× the live tensors of the same product in "
            "reverse mode (146.5 MiB against 179.0 MiB, `--graph-sizes` below) at 1.20× its "
            "time, and leaves a Hessian-vector product's peak as the tick's: 2.01× and 2.00× "
            "the plain step's live tensors (2.08× both, with the mixed product in reverse "
            "mode, in the previous run), 2.67× and 2.65× its resident peak (memory the "
            "allocator holds beyond the live tensors: more than in forward mode; with "
            "glibc's `MALLOC_MMAP_THRESHOLD_=65536`, which maps every block of 64 KiB or "
            "more and returns it to the system when it is freed, one round of an earlier run "
            "measured `cg-recompute` at 2.00× resident (2.08× live), but the plain step took "
            "1.44× and the tick 1.63× as long), at 1.45× and 1.17× reverse mode's time and "
            "0.62× and 0.59× forward mode's (18.86× and 17.13× the plain step), with reverse "
            "mode's values (the mixed product forward mode's, equal to 1e-12 in float64). "
            '`hvp="auto"` therefore '
            'stays in reverse mode and moves a level to `"recompute"` when its products run '
            "out of memory. `-fd` takes each product "
            '(`ProblemConfig(hvp="finite_difference")`) from two plain gradients: 1.74× the '
            "plain step's peak at 1.06× cg's time, but on this ReLU and max-pool network its "
            "products are far from the exact ones at every radius (next section), so it is "
            "no answer for such networks. `unroll` with one graph (`-one_graph`) grows "
            "linearly with K: reverse mode through K steps keeps each step's activations "
            "until the backward pass. From K = 4 on the default checkpoints the replay (one "
            "step's graph at a time, rebuilt from stored states): 3.02× at K = 4 and 3.08× "
            "at K = 8 against 7.14× and 13.15× with one graph, at 1.23× and 1.25× their "
            "time. Its `-forward` variant (each replayed step's products by one "
            "forward-over-reverse pass) holds no less here (2.74× and 2.69× resident, but "
            "2.72× and 2.91× live against 2.43× and 2.58×), because that pass differentiates "
            'the supernet and the architecture at once; `hvp="auto"` leaves `unroll` in '
            "reverse mode. Why reverse mode stays near 3×: `python benchmarks/memory.py "
            "--graph-sizes` counts live tensors and the tensors autograd saves. A plain step "
            "peaks at 86.6 MiB of live tensors, a cg(5) tick at 262.4 MiB (3.03×). An exact "
            "reverse-over-reverse product needs the forward's saved tensors and those of the "
            "first backward built with `create_graph`: 152.0 MiB with the architecture held "
            "fixed (1.76× the plain step's whole peak), 175.7 MiB with the architecture "
            "differentiable, as the mixed product needs it (2.03×), before any product runs; "
            "a double backward through a graph kept for the next product frees nothing as it "
            "goes, and adds about one set of activation gradients (the other 87 MiB). "
            "Forward mode keeps no graph between products and recompute only the forward's, "
            "and both reach 2.0× in live tensors; their resident peaks are higher by what "
            "the allocator keeps. The same command measures what one Hessian-vector product "
            "(the architecture held) costs and holds in each mode (`mlo.autodiff.op_cost` "
            "for its operations, which counts a convolution backward's gradients as the "
            "forward convolution's flops, groups included: torch's formula leaves the groups "
            "out and counted the plain pass 2.9× higher here): building the graph is one "
            "plain forward and backward pass (1.02× its operations), and each reverse "
            "product one double backward through it, 2.16× a plain pass's operations (1.72× "
            "its time; 2.36× with PyTorch's grouped-convolution routine, the same "
            "operations), holding 2.72× its live tensors with the graph; a recompute product "
            "is the build's backward from the kept forward pass (the forward pass alone is "
            "0.35× a plain pass's operations and 0.40× its time) and the double backward, "
            "2.92× the operations (2.30× the time), holding 1.96× with its forward pass; a "
            "forward product evaluates the forward and backward pass again, with tangents: "
            "3.77× the operations (op_cost counts the detached view of each saved tensor as "
            "one operation per element; 3.54× before they were held detached), 4.56× the "
            "time, holding 1.93× (2.66× a reverse product's time; the two agree to 6.7e-7 of "
            "the largest entry, in float32). Five products are about 18 plain passes of "
            "operations in forward mode, 15 in recompute and 12 in reverse mode: what the "
            "two modes save in memory is the graph they build again in every product. No "
            "exact mode is within 2.0× at reverse mode's time. Times are per tick of a "
            "search (a supernet step and an architecture step) against one plain step, so "
            "even `first_order`, whose architecture step is one more forward and backward "
            "pass (on a validation batch), takes 1.65×. `sama`'s 3.34× is what its "
            "algorithm's passes cost: the paper's meta-gradient is three first-order "
            "backward passes (the validation gradient, then the training loss's gradient "
            "with respect to the architecture at θ + r u and at θ − r u) after the "
            "supernet's own step, and Betty's `sama` makes the same passes. Its two extra "
            "gradients add 1.69 plain steps to `first_order`'s tick, so a tick within 2.0× "
            "one plain step is below what the published algorithm costs on this network; "
            "against `first_order`'s tick, the cheapest bilevel tick, `sama` costs 2.02×. "
            "The host was quieter in this run than in the previous one (the plain step 450.2 "
            "ms against 499.9 ms) and the ratios of the rows whose code did not change moved "
            "by up to 7 % (`first_order` 1.65× against 1.77×, `darts` 3.19× against 3.29×, "
            "`sama` 3.34× against 3.56×, `neumann` 14.69× against 13.81×): time ratios here "
            "are good to about that; the memory columns do not depend on it."
        ),
        ["--rounds", "2"],
        TINY_SUPERNET,
    ),
    Benchmark(
        "fuse_mixed",
        "cg's mixed products inside its Hessian-vector products",
        "fuse_mixed.py",
        "`CG(fuse_mixed=...)`, each program in one process with the three settings "
        "interleaved: `True` takes each direction's mixed product in its Hessian-vector "
        "product's double backward (one pass fewer per solve), `False` one mixed product "
        'of the solution after the iterations, `"auto"` (the default) chooses on the '
        "level's first solve by counting both products' operations from their shapes. On "
        "the tiny quadratic of the overhead section the parent enters through a dense "
        "matrix, so each mixed part is a matrix-vector product beside an elementwise "
        "Hessian-vector product: fusing is slower and `auto` does not fuse. On the DARTS "
        "supernet the architecture weights only scale each operation's output: fusing "
        "saves about a ninth of the tick and `auto` fuses. On LeaSE `auto` fuses on both "
        "cg levels (the explainer below relearn's architecture, the audience below the "
        "explanations).",
        ["--rounds", "300", "--supernet-rounds", "8", "--lease-rounds", "4"],
        TINY_FUSE,
    ),
    Benchmark(
        "hvp_accuracy",
        "Finite-difference products on the supernet",
        "hvp_accuracy.py",
        "The same supernet, at its weights after 5 SGD steps: the central difference of two "
        "gradients at distance r along v (the validation gradient) against the exact "
        "Hessian-vector and mixed products. On a smooth objective the error falls as r² "
        "(a tanh MLP: 1.4e-5 at r = 0.01, `tests/mlo/test_finite_difference.py`); here it "
        "never falls below 1.7 (170 %) at any r and grows as r shrinks, in float64 as in float32: "
        "the gradient of a ReLU and max-pool network jumps at every kink the two points "
        "straddle, and the exact (almost-everywhere) Hessian does not see those jumps.",
        [],
        ["--layers", "1", "--channels", "4", "--batch", "4", "--size", "8"],
    ),
    Benchmark(
        "memory_lease",
        "Peak memory per solver on LeaSE",
        "memory.py",
        (
            "LeaSE's four levels (`problems.lease.build`: a tiny ResNet audience, 2-step "
            "differentiable PGD explanations, the explicit explain level) on the same "
            "supernet as above, each solver on the explainer and the audience, against the "
            "same plain supernet step; one round of fresh processes, 2 ticks each. Here the "
            "solver hardly matters: `darts`, `sama`, `cg(5)` and `neumann(5)` all peak at "
            "3.9–4.0× the plain step (4.08× its live tensors), because the relearn level's "
            "gradient reaches the architecture through the differentiable PGD explanations, "
            "whose graph through the supernet is held for it; `cg-forward` and `cg-recompute`"
            ' (`hvp="forward"` and `hvp="recompute"` on the explainer and the audience) hold '
            "the same, since that graph, not the products, sets the peak; `first_order` (no "
            "Jacobian, so no such graph) holds 1.22×. `cg-separate` is cg with "
            "`fuse_mixed=False` (one mixed product after the iterations), against the default"
            ' `"auto"`, which fuses on both cg levels here: the same 4.08× live tensors; the '
            "times of this one round of 2 ticks (20.10× and 16.41×; 22.71× and 22.06× in the "
            'previous run) include, in the first tick, the two products `"auto"` counts on '
            "each level to choose; after that, interleaved in one process, see \"cg's mixed "
            'products inside its Hessian-vector products" above (measured before the grouped '
            "convolutions' double backward of the section above; rerun after it with fewer "
            "rounds, `python benchmarks/fuse_mixed.py --rounds 3 --supernet-rounds 2 "
            "--lease-rounds 2`, fusing took 0.93× the separate mixed product's time on LeaSE "
            'and 0.90× on the supernet, and `"auto"` fused on both, so this round\'s 16.41× '
            "against 20.10× is the noise of one round of 2 ticks). The products here take the"
            " grouped convolutions' double backward of the section above: against the "
            "previous run, with PyTorch's routine, `cg` took 20.10× the plain step (22.71×), "
            "`neumann` 16.87× (20.22×) and `cg-recompute` 20.96× (26.05×), on a host slower "
            "in both runs (the plain step 865 ms and 796 ms, against 500 ms and 430 ms in the"
            " section above), so these times are rough; the memory columns do not depend on "
            "it."
        ),
        [
            "--network",
            "lease",
            "--rounds",
            "1",
            "--ticks",
            "2",
            "--only",
            "plain",
            "first_order",
            "darts",
            "sama",
            "cg",
            "neumann",
            "cg-forward",
            "cg-recompute",
            "cg-separate",
        ],
        ["--network", "lease", *TINY_SUPERNET],
    ),
    Benchmark(
        "memory_betty",
        "Peak memory against Betty",
        "memory.py",
        (
            "The DARTS search of the first memory section in Betty's own engine (betty-ml "
            "0.1.1, the version on the package index): `betty-darts`, `betty-cg` and `betty-"
            'neumann` are Betty\'s `type="darts"`, `"cg"` and `"neumann"` hypergradients (5 '
            "iterations, as mlo's `cg` and `neumann`) on the supernet level, its architecture"
            " level configured `Config(first_order=True, retain_graph=True)` as Betty's "
            "examples configure their upper levels, on the same supernet, batches and "
            "optimizers, against the same plain step; one round of fresh processes, 3 ticks "
            'each, with mlo\'s rows of the same round in their defaults (`hvp="auto"`, which '
            'takes reverse-mode products here; `cg` with `fuse_mixed="auto"`), the processes '
            "one at a time on a host slower than quiet (the plain step 515.5 ms against 430 "
            "ms); one round, so the times are good to several"
            " per cent. mlo holds less with `darts`: 0.66× Betty's resident peak and 0.76× "
            "its live tensors, at 0.97× its time. With `cg` and `neumann` both engines hold "
            "the same, about 3× the plain step (mlo 1.03× and 1.02× Betty's resident peak, "
            "0.99× and 1.00× its live tensors: both keep the gradient's graph for the "
            "products), and mlo takes 0.63× and 0.73× Betty's time per tick. Betty's engine "
            "is no lower floor for exact products, then; the modes below 3× are mlo's "
            '`hvp="recompute"` and `hvp="forward"` (2.01× and 1.98× the plain step\'s live '
            "tensors, first memory section)."
        ),
        [
            "--rounds",
            "1",
            "--only",
            "plain",
            "darts",
            "cg",
            "neumann",
            "betty-darts",
            "betty-cg",
            "betty-neumann",
        ],
        [*TINY_SUPERNET, "betty-darts", "--layers", "3"],  # the later --layers wins
    ),
    Benchmark(
        "accuracy",
        "Hypergradient accuracy against Hessian-vector products",
        "accuracy.py",
        "mlo's and Betty's solvers on a 200-dimensional SPD quadratic (condition number 50) "
        "and on a logistic-regression inner problem over a small MLP's features, float64, "
        "against dense solves. `sama` runs with an Adam lower level (lr 0.01, its second "
        "moments from 500 steps from 0, then set at the best response): a first-order "
        "approximation, constant in the products, like `darts`. Here it is the least accurate "
        "of mlo's solvers: relative error 1.50 on both problems (darts 0.75 and 0.31), and its "
        "direction is further from the truth's than darts' (cosines printed under each table); "
        "the paper's claim is about cost at scale, which the memory section measures.",
        [],
        ["--n", "20"],
        plots=("accuracy.png", "accuracy_mlp.png"),
    ),
    Benchmark(
        "darts_step",
        "One DARTS iteration on a small CNN",
        "darts_step.py",
        "A mixed-operation CNN: mlo, the same step by hand, and Betty.",
        [],
        ["--rounds", "2", "--warmup", "0", "--batch", "4", "--size", "8"],
    ),
    Benchmark(
        "nas_search_step",
        "One supernet search step",
        "nas_search_step.py",
        "The DARTS supernet of `problems.nas`: mlo against the hand-written step.",
        [],
        ["--rounds", "2", "--warmup", "0", "--batch", "2", "--layers", "3", "--channels", "4"],
    ),
    Benchmark(
        "lease_step",
        "One LeaSE iteration",
        "lease_step.py",
        "LeaSE's four levels: mlo, by hand, and Betty's wiring of the same program.",
        [],
        ["--rounds", "1", "--pgd-steps", "1", "--layers", "3", "--channels", "4"],
    ),
    Benchmark(
        "nested",
        "What exact nested Jacobians cost",
        "nested.py",
        "A three-level chain whose middle level reads its lower level: `jacobian='total'` "
        "against `'partial'`.",
        [],
        ["--rounds", "2", "--warmup", "0", "--width", "4"],
    ),
    Benchmark(
        "threads",
        "CPU threads on a quiet and on a busy machine",
        "threads.py",
        "The main job's search on digits (`lease_cifar.py search --small --dataset digits`, "
        "3 architecture updates, whole process) with the examples' default threads, with "
        "one thread per core fixed (the default before it adapted), and with `--threads 1`; "
        "busy: one spinning process per core. The machine's other work was paused.",
        ["--rounds", "2"],
        ["--rounds", "1", "--steps", "1", "--quiet-only"],
    ),
    Benchmark(
        "checkpoint",
        "Checkpoints",
        "checkpoint.py",
        "Size and write time of a default LeaSE search checkpoint.",
        [],
        ["--rounds", "1", "--batch", "2"],
    ),
]


def arguments(bench: Benchmark, quick: bool, plots: str) -> list[str]:
    """The script's command-line arguments, its plot written into the folder ``plots``."""
    args = list(bench.quick if quick else bench.args)
    if bench.plots:
        args += ["--plot", f"{plots}/{bench.plots[0]}"]
    return args


def run(bench: Benchmark, quick: bool, out: Path) -> str:
    """The script's standard output; raises naming the script when it fails."""
    command = [sys.executable, str(HERE / bench.script), *arguments(bench, quick, str(out))]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"error: benchmarks/{bench.script} failed (exit {done.returncode}):\n"
            + done.stderr[-2000:]
        )
    # The plots are written to a scratch folder first; the page names where they end up.
    return done.stdout.strip().replace(f"{out}/", "docs/")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        betty = version("betty-ml")
    except PackageNotFoundError:
        betty = "not installed"
    return f"torch {torch.__version__}, betty-ml {betty}, Python {platform.python_version()}"


def section(bench: Benchmark, output: str, args: list[str], quick: bool) -> str:
    """One benchmark's part of the page: what it measures, when, the command, the output."""
    command = " ".join(["python", f"benchmarks/{bench.script}", *args])
    lines = [f"## {bench.title}", "", bench.what, ""]
    if quick:
        lines += ["**Quick smoke run: tiny sizes, not measurements.**", ""]
    lines += [f"Measured {datetime.date.today().isoformat()}: `{command}`", ""]
    lines += [formatted(output), ""]
    for plot in bench.plots:
        lines += [f"![{bench.title}]({plot})", ""]
    return "\n".join(lines)


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def formatted(output: str) -> str:
    """A script's output for the page: each aligned table (a header line without digits,
    then rows with as many columns, columns apart by two or more spaces) as a Markdown
    table, which the site lays out in its column; every other line as printed, in text
    blocks, in order."""
    lines = output.strip("\n").split("\n")
    parts: list[str] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            parts.append("\n".join(["```text", *text, "```"]))
            text.clear()

    i = 0
    while i < len(lines):
        header = _cells(lines[i])
        j = i + 1
        while j < len(lines) and len(_cells(lines[j])) == len(header):
            j += 1
        if len(header) >= 2 and j - i >= 3 and not re.search(r"\d", lines[i].replace("×", "")):
            flush()
            rows = [header, *(_cells(line) for line in lines[i + 1 : j])]
            table = ["| " + " | ".join(r) + " |" for r in rows]
            table.insert(1, "|" + "---|" * len(header))
            parts.append("\n".join(table))
            i = j
        else:
            text.append(lines[i])
            i += 1
    flush()
    return "\n\n".join(parts)


def page(sections: dict[str, str]) -> str:
    """The page: the machine and versions, how to rerun, then the sections in suite order."""
    cpu = platform.processor() or platform.machine()
    header = [
        "# Benchmarks",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}, {platform.system()}), {versions()}. "
        "Every script runs its compared versions interleaved in one process and prints "
        "medians of paired ratios, so that a noisy machine does not decide a result. Rerun "
        "them all and rewrite this page with `python benchmarks/suite.py` (about 7 "
        "minutes on 2 cores), or rerun some with `python benchmarks/suite.py --only NAME ...` "
        "(their sections are replaced, the others kept). GPU figures come from "
        "`python benchmarks/gpu.py` on a GPU machine and are quoted in the README.",
        "",
    ]
    order = [b.title for b in SUITE]
    titles = sorted(sections, key=lambda t: order.index(t) if t in order else len(order))
    return "\n".join(header) + "\n" + "\n".join(sections[t] for t in titles)


def existing_sections(path: Path) -> dict[str, str]:
    """The sections of a page written before, by title (none when there is no page)."""
    if not path.is_file():
        return {}
    parts = path.read_text().split("\n## ")[1:]
    out = {}
    for part in parts:
        title = part.split("\n", 1)[0].strip()
        out[title] = ("## " + part).rstrip("\n") + "\n"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [b.name for b in SUITE]
    parser.add_argument("--only", nargs="+", choices=names, help="run these only")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs", help="folder for benchmarks.md and plots"
    )
    args = parser.parse_args()
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder")
    chosen = [b for b in SUITE if not args.only or b.name in args.only]
    target = args.out / "benchmarks.md"
    with tempfile.TemporaryDirectory() as scratch:
        sections = existing_sections(target) if args.only else {}
        for bench in chosen:
            print(f"running benchmarks/{bench.script} ...", flush=True)
            output = run(bench, args.quick, Path(scratch))
            shown = arguments(bench, args.quick, "docs")  # as a user reruns it
            sections[bench.title] = section(bench, output, shown, args.quick)
        # Every script succeeded: now write the page and move the plots beside it.
        args.out.mkdir(parents=True, exist_ok=True)
        for bench in chosen:
            for plot in bench.plots:
                os.replace(Path(scratch) / plot, args.out / plot)
        partial = target.with_suffix(".md.tmp")
        partial.write_text(page(sections))
        os.replace(partial, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
