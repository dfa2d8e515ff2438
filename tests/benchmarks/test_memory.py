"""benchmarks/memory.py runs as a user runs it, at tiny sizes: fresh processes, a plain
step and a solver, their peaks and the ratio between them."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from ..scripts import ROOT, run_child


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_memory_benchmark_reports_each_configs_peak_against_the_plain_step():
    """mlo's rows and Betty's (its own engine on the same search; 3 cells, since with
    fewer Betty refuses the architecture weights that no cell uses)."""
    pytest.importorskip("betty", reason="Betty's row needs betty-ml (the dev extra)")
    quick = ["--rounds", "1", "--ticks", "1", "--layers", "3", "--channels", "4"]
    quick += ["--batch", "4", "--size", "8", "--only", "plain", "darts", "betty-darts"]
    done = run_child([sys.executable, str(ROOT / "benchmarks" / "memory.py"), *quick], 300)
    assert done.returncode == 0, done.stderr[-3000:]
    pattern = r"^(plain|darts|betty-darts)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
    rows = {
        m.group(1): (float(m.group(2)), float(m.group(4)))
        for m in re.finditer(pattern, done.stdout, re.M)
    }
    assert set(rows) == {"plain", "darts", "betty-darts"}, done.stdout
    assert rows["plain"][1] == 1.0 and all(peak > 0 for peak, _ in rows.values())


def test_betty_rows_on_too_few_cells_or_on_lease_are_one_error_line():
    script = str(ROOT / "benchmarks" / "memory.py")
    for flags, said in (
        (["--layers", "2"], "need --layers 3 or more"),
        (["--network", "lease"], "run the DARTS search; leave out --network lease"),
    ):
        done = run_child([sys.executable, script, *flags, "--only", "betty-cg"], 60)
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_live_peak_counts_the_tensors_alive_at_once():
    from ..scripts import load_script

    bench = load_script(ROOT / "benchmarks" / "memory.py")

    def step() -> None:
        a = torch.ones(2**18)  # 1 MiB
        b = torch.ones(2**19)  # 2 MiB, while a lives
        del a, b
        c = torch.ones(2**19)  # 2 MiB after both are freed
        del c

    assert bench._live_peak(step) == 3 * 2**20


@pytest.mark.slow
def test_graph_sizes_reports_the_graph_an_exact_product_keeps():
    quick = ["--graph-sizes", "--layers", "1", "--channels", "4", "--batch", "4", "--size", "8"]
    done = run_child([sys.executable, str(ROOT / "benchmarks" / "memory.py"), *quick], 300)
    assert done.returncode == 0, done.stderr[-3000:]
    numbers = [float(x) for x in re.findall(r"([\d.]+) MiB", done.stdout)]
    plain, tick, held_forward, held_both, diff_forward, diff_both = numbers[:6]
    assert tick > plain > 0
    # the first backward's create_graph tensors come on top of the forward's, and a
    # differentiable architecture makes both keep more (the mixed operations' outputs)
    assert held_both > held_forward and diff_both > diff_forward
    assert diff_forward > held_forward and diff_both > held_both
    # one product's operations in each mode: the reverse product reuses the graph built
    # once, the forward product evaluates the forward and backward pass again with tangents
    ops = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^  (\w+) .*?: ([\d.e+]+) operations", done.stdout, re.M)
    }
    assert set(ops) == {"plain", "evaluation", "build", "reverse", "forward", "recompute"}
    # the build is the plain pass with create_graph, its grouped convolutions' backward
    # taken as convolutions of the same flops (mlo.autodiff.grouped_conv) and a few
    # reshapes, which op_cost counts as an operation per element (5 % here)
    assert ops["build"] == pytest.approx(ops["plain"], rel=0.06)
    assert ops["build"] > ops["evaluation"] > 0
    assert ops["forward"] > ops["reverse"] > ops["build"]
    # recompute, once its forward pass is kept: the build's backward and the double
    # backward, fewer operations than forward mode. To 6 %: op_cost counts a view as one
    # operation per element, and the product takes a detached view of each tensor its
    # backward saves (4.6 % here); a forward pass would be 12 %.
    backward = ops["build"] - ops["evaluation"]
    assert ops["recompute"] == pytest.approx(backward + ops["reverse"], rel=0.06)
    assert ops["recompute"] < ops["forward"]
    live = dict(re.findall(r"(reverse|recompute|forward) ([\d.]+) MiB", done.stdout))
    assert float(live["recompute"]) < float(live["reverse"]), done.stdout
    apart = float(re.search(r"differ by at most ([\d.e+-]+) of", done.stdout).group(1))
    assert apart < 1e-4
    # recompute's mixed product: forward-over-reverse holds less than reverse mode
    mixed = dict(re.findall(r"by ([\w-]+): ([\d.]+) MiB live", done.stdout))
    assert float(mixed["forward-over-reverse"]) < float(mixed["reverse"]), done.stdout
    apart = float(re.search(r"they differ by ([\d.e+-]+) of", done.stdout).group(1))
    assert apart < 1e-4
