"""benchmarks/fuse_mixed.py runs as a user runs it, at tiny sizes, and its "auto" makes
the programs' opposite choices."""

from __future__ import annotations

import re
import sys

from ..scripts import ROOT, run_child


def test_auto_fuses_on_the_supernet_and_not_on_the_dense_quadratic():
    quick = ["--rounds", "3", "--supernet-rounds", "1", "--lease-rounds", "1", "--n", "64"]
    quick += ["--warmup", "1", "--layers", "1"]
    quick += ["--channels", "4", "--batch", "4", "--size", "8"]
    done = run_child([sys.executable, str(ROOT / "benchmarks" / "fuse_mixed.py"), *quick], 300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.findall(
        r"^(quadratic|supernet|lease)\s.*×\s+(fused|separate|both)$", done.stdout, re.M
    )
    chose = dict(found)
    assert chose == {"quadratic": "separate", "supernet": "fused", "lease": "fused"}, done.stdout


def test_a_bad_count_is_one_error_line():
    script = str(ROOT / "benchmarks" / "fuse_mixed.py")
    for flag in ("--supernet-rounds", "--warmup"):
        done = run_child([sys.executable, script, flag, "0"], 60)
        assert done.returncode == 2
        assert f"error: {flag} must be at least 1" in done.stderr
        assert "Traceback" not in done.stderr
