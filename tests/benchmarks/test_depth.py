"""benchmarks/depth.py --memory: each version's peak in a fresh process of its own."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ..scripts import ROOT, subprocess_env

pytest.importorskip("betty", reason="needs betty-ml (the dev extra installs it)")


def test_memory_reports_a_fresh_peak_per_version():
    script = str(ROOT / "benchmarks" / "depth.py")
    done = subprocess.run(
        [sys.executable, script, "--memory", "3", "--dim", "20", "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("dense chain of 3 levels, dim 20, 2 ticks")
    peaks = [re.fullmatch(r"(mlo, defaults|Betty 0\.1\.1): (\d+) MiB", ln) for ln in lines[1:]]
    assert [m.group(1) for m in peaks] == ["mlo, defaults", "Betty 0.1.1"]
    # a fresh process with torch imported holds well over 100 MiB, and far below 2 GiB here
    assert all(100 < int(m.group(2)) < 2048 for m in peaks)
