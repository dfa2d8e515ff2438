"""benchmarks/memory.py runs as a user runs it, at tiny sizes: fresh processes, a plain
step and a solver, their peaks and the ratio between them."""

from __future__ import annotations

import re
import sys

import pytest

from ..scripts import ROOT, run_child


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_memory_benchmark_reports_each_configs_peak_against_the_plain_step():
    quick = ["--rounds", "1", "--ticks", "1", "--layers", "1", "--channels", "4"]
    quick += ["--batch", "4", "--size", "8", "--only", "plain", "darts"]
    done = run_child([sys.executable, str(ROOT / "benchmarks" / "memory.py"), *quick], 300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {
        m.group(1): (float(m.group(2)), float(m.group(4)))
        for m in re.finditer(r"^(plain|darts)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", done.stdout, re.M)
    }
    assert set(rows) == {"plain", "darts"}, done.stdout
    assert rows["plain"][1] == 1.0 and rows["plain"][0] > 0 and rows["darts"][0] > 0
