"""Run an example script with float64 as torch's default dtype (its data, models and
solvers then compute in float64): python tests/distributed/float64_example.py SCRIPT ARGS,
or under torchrun. The data-parallel tests use it to compare two ranks with one process
where float32 rounding would decide the comparison."""

from __future__ import annotations

import runpy
import sys

import torch

if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    script = sys.argv[1]
    sys.argv = [script, *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")
