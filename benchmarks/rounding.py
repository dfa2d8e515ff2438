"""How much rounding moves the architecture hypergradient of LeaSE and DARTS in float32.

One process, one search step of ``examples/lease_cifar.py`` (or ``darts_cifar.py``) run
twice, identical but for
batch norm: PyTorch's ``BatchNorm``, and ``mlo.SyncBatchNorm``'s formula forced on one
rank (a one-pass variance of float64 sums about the running mean; mathematically the same
normalisation, rounded differently). The architecture's first Adam moment after the step
is ``0.1 ×`` its hypergradient; the script prints the largest difference between the two
runs relative to the largest entry, for each solver given. With ``--lam 0`` the
architecture's hypergradient is the audience's path alone (the explainer's validation
loss is dropped from its objective). PGD explanations run without a random start, so the
two runs see the same explanations up to rounding.

    python benchmarks/rounding.py                        # LeaSE --small, darts and cg
    python benchmarks/rounding.py --solvers darts --lam 1
    python benchmarks/rounding.py --example darts --solvers darts
"""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"lease": "lease_cifar.py", "darts": "darts_cifar.py"}
TOP = {"lease": "relearn", "darts": "architecture"}


class _OneRank:
    """A reducer over one rank: the average of one tensor is itself."""

    world = 1

    def mean(self, tensors):
        return list(tensors)


def _run_with_sync_formula(script: str, args: list[str]) -> None:
    """Run an example with SyncBatchNorm's own arithmetic on one process."""
    import mlo.parallel.sync_batchnorm as sync

    sync.distributed = types.SimpleNamespace(world_size=lambda: 2, Reducer=_OneRank)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def _search(example: str, out: Path, flags: list[str], sync_formula: bool) -> torch.Tensor:
    script = str(ROOT / "examples" / EXAMPLES[example])
    args = ["search", *flags, "--out", str(out)]
    if sync_formula:
        command = [sys.executable, __file__, "--sync-formula-run", script, *args, "--sync-bn"]
    else:
        command = [sys.executable, script, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command, check=True, env=env, capture_output=True, cwd=ROOT)
    state = torch.load(out / "checkpoint.pt", weights_only=True)["engine"]["problems"]
    moments = state[TOP[example]]["optimizer"]["state"].values()
    return torch.cat([m["exp_avg"].double().reshape(-1) for m in moments])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--sync-formula-run":
        _run_with_sync_formula(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--example", choices=list(EXAMPLES), default="lease")
    parser.add_argument("--solvers", nargs="+", default=["darts", "cg"])
    parser.add_argument("--lam", type=float, default=0.0, help="LeaSE's λ")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    lease = args.example == "lease"
    print(
        f"torch {torch.__version__}, examples/{EXAMPLES[args.example]} --small --dataset "
        "synthetic, one step, float32"
        + (f", --lam {args.lam:g}, no PGD random start" if lease else "")
    )
    print(f"{'solver':8s} {'max |Δ hypergradient| / max |hypergradient|':>45s}")
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "deterministic.toml"
        config.write_text("[lease.explanation]\nrandom_start = false\n")
        for solver in args.solvers:
            flags = ["--small", "--dataset", "synthetic", "--max-steps", "1", "--no-progress"]
            flags += ["--workers", "0", "--threads", str(args.threads), "--solver", solver]
            if lease:
                flags += ["--lam", str(args.lam), "--config", str(config)]
            plain = _search(args.example, Path(folder) / f"{solver}-bn", flags, False)
            other = _search(args.example, Path(folder) / f"{solver}-sync", flags, True)
            relative = float((plain - other).abs().max() / plain.abs().max())
            print(f"{solver:8s} {relative:45.2e}")


if __name__ == "__main__":
    main()
