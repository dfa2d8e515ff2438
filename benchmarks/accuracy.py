"""Hypergradient accuracy against the number of Hessian-vector products, for mlo's
``cg``, ``neumann`` and ``darts`` on a 200-dimensional quadratic bilevel problem, in
float64, against a dense solve.

    lower  y:  f(y; x) = ½ yᵀA y − yᵀB x          A SPD, eigenvalues in [1, κ]
    upper  x:  F(x; y) = ½‖y − t‖² + ½ρ‖x‖²

The lower level sits at its exact best response ``y* = A⁻¹B x``; the truth is
``ρx + Bᵀ A⁻¹ (y* − t)``. ``cg`` and ``neumann`` spend K products (K = 1 … 200); ``darts``
spends two gradient evaluations whatever K (a constant line). Prints the relative error
per solver and K and writes a log-scale plot.

Not included yet: ``unroll`` (its truth is the derivative of the training procedure, not
of the fixed point), the small MLP with a logistic inner problem, and Betty's solvers.

    python benchmarks/accuracy.py [--n 200] [--kappa 50] [--plot docs/accuracy.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

import mlo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log_plot

DTYPE = torch.float64
RHO = 0.1


class Vec(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(value.clone())


def problem(n: int, kappa: float):
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    a = q @ torch.diag(torch.linspace(1.0, kappa, n, dtype=DTYPE)) @ q.T
    b = torch.randn(n, n, generator=gen, dtype=DTYPE) / n**0.5
    t = torch.randn(n, generator=gen, dtype=DTYPE)
    x = torch.randn(n, generator=gen, dtype=DTYPE)
    y = torch.linalg.solve(a, b @ x)
    truth = RHO * x + b.T @ torch.linalg.solve(a, y - t)
    return a, b, t, x, y, truth


def hypergradient(solver, a, b, t, x, y, lr: float) -> torch.Tensor:
    class Lower(mlo.Problem):
        def training_step(self, batch):
            v = self.module.v
            return 0.5 * v @ a @ v - v @ (b @ self.upper.module.v)

    class Upper(mlo.Problem):
        def training_step(self, batch):
            d = self.lower.module.v - t
            return 0.5 * d @ d + 0.5 * RHO * self.module.v @ self.module.v

    lower_module, upper_module = Vec(y), Vec(x)
    lower = Lower(
        "lower",
        lower_module,
        torch.optim.SGD(lower_module.parameters(), lr=lr),
        config=mlo.ProblemConfig(solver=solver),
    )
    upper = Upper("upper", upper_module, torch.optim.SGD(upper_module.parameters(), lr=lr))
    engine = mlo.Engine([upper, lower], {"upper": ["lower"]}, mlo.EngineConfig(progress=False))
    return engine.hypergradient("upper")["v"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--kappa", type=float, default=50.0, help="condition number of A")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    a, b, t, x, y, truth = problem(args.n, args.kappa)
    alpha = 1.0 / args.kappa  # the Neumann step and darts' ξ: 1/λ_max, the stable choice
    budgets = [k for k in (1, 2, 5, 10, 20, 50, 100, 200) if k <= args.n]
    curves: dict[str, list[float]] = {"cg": [], "neumann": [], "darts": []}
    for k in budgets:
        solvers = {
            "cg": mlo.solvers.CG(iterations=k, tol=0.0),
            "neumann": mlo.solvers.Neumann(iterations=k, alpha=alpha),
            "darts": mlo.solvers.Darts(xi=alpha),
        }
        for name, solver in solvers.items():
            got = hypergradient(solver, a, b, t, x, y, alpha)
            curves[name].append(float((got - truth).norm() / truth.norm()))
    print(
        f"{args.n}-dim SPD quadratic, condition number {args.kappa:g}, float64, torch "
        f"{torch.__version__}; relative error of the hypergradient"
    )
    print("products " + "".join(f"{name:>12s}" for name in curves))
    for i, k in enumerate(budgets):
        print(f"{k:8d} " + "".join(f"{curves[name][i]:12.3e}" for name in curves))
    if args.plot is not None:
        floor = {f"mlo {k}": [max(v, 1e-17) for v in values] for k, values in curves.items()}
        log_plot(args.plot, budgets, floor, "Hessian-vector products", "relative error", True)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
