"""The engine's per-update overhead: a tiny 2-level tick, where the arithmetic is cheap and
anything around the autograd calls shows.

Two levels whose parameters are n-dimensional vectors (n = 2000) with quadratic
objectives, the lower one trained by SGD:

    lower  y:  f(y; x) = ½ yᵀDy − yᵀ B x          (B fixed, n × n; D diagonal in [½, 2])
    upper  x:  F(x; y) = ½‖y − t‖² + ½ρ‖x‖²

One tick: one SGD step on y, then one SGD step on x with the hypergradient
``∇_x F − ∂²f/∂x∂y · w``, ``v = ∇_y F``, where each solver gives ``w ≈ H⁻¹v``:

- ``first_order``: no implicit term;
- ``darts``: ``w = ξ v``, the mixed product by central differences at ``y ± r v``,
  ``r = ε/‖v‖``;
- ``neumann``: ``w = α Σ_{k≤K} (I − αH)^k v`` (K = 3 Hessian-vector products);
- ``cg``: K = 3 conjugate-gradient steps on ``H w = v``.

Versions: the same math hand-written with the same autograd calls (the floor), mlo, and
Betty (betty-ml 0.1.1: its ``darts``, ``neumann`` and ``cg`` types, and
``first_order=False`` for no implicit term). Rounds interleave the versions; the script
prints the median time per tick and the medians of the paired ratios to the floor, per
solver.

    python benchmarks/overhead.py [--solvers first_order darts neumann cg] [--n 2000]
        [--rounds 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import mlo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import betty_bilevel_step, quiet_betty

RHO, LR, EPSILON, K = 0.1, 0.1, 0.01, 3
SOLVERS = ("first_order", "darts", "neumann", "cg")


class Vec(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(value.clone())


def setup(n: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(n, n, generator=gen, dtype=dtype) / n**0.5
    d = torch.linspace(0.5, 2.0, n, dtype=dtype)  # the lower level's Hessian, diagonal
    t = torch.randn(n, generator=gen, dtype=dtype)
    x0 = torch.randn(n, generator=gen, dtype=dtype)
    y0 = torch.randn(n, generator=gen, dtype=dtype)
    return (b, d), t, x0, y0


def lower_loss(y, x, coefficients):
    b, d = coefficients
    return 0.5 * (d * y) @ y - y @ (b @ x)


def upper_loss(x, y, t):
    return 0.5 * (y - t) @ (y - t) + 0.5 * RHO * x @ x


# --------------------------------------------------------------------------- by hand


def hand_step(solver: str, n: int, dtype: torch.dtype = torch.float32):
    b, t, x0, y0 = setup(n, dtype)
    x, y = Vec(x0), Vec(y0)
    x_opt, y_opt = torch.optim.SGD(x.parameters(), lr=LR), torch.optim.SGD(y.parameters(), lr=LR)

    def implicit(v: torch.Tensor) -> torch.Tensor:
        """``∂²f/∂x∂y · w`` for the solver's ``w ≈ H⁻¹v``."""
        if solver == "darts":
            r = EPSILON / torch.linalg.vector_norm(v)
            theta = y.v.detach()
            (plus,) = torch.autograd.grad(lower_loss(theta + r * v, x.v, b), [x.v])
            (minus,) = torch.autograd.grad(lower_loss(theta - r * v, x.v, b), [x.v])
            return LR * (plus - minus) / (2 * r)
        (g,) = torch.autograd.grad(lower_loss(y.v, x.v, b), [y.v], create_graph=True)

        def hvp(u: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(g, [y.v], u, retain_graph=True)[0]

        if solver == "neumann":
            term, total = v, v
            for _ in range(K):
                term = term - LR * hvp(term)
                total = total + term
            w = LR * total
        else:  # cg
            w, r, p = torch.zeros_like(v), v, v
            rr = r @ r
            for _ in range(K):
                hp = hvp(p)
                step = rr / (p @ hp)
                w, r = w + step * p, r - step * hp
                rr_next = r @ r
                p, rr = r + (rr_next / rr) * p, rr_next
        return -torch.autograd.grad(g, [x.v], w)[0]

    def step() -> None:
        (g,) = torch.autograd.grad(lower_loss(y.v, x.v, b), [y.v])
        y.v.grad = g
        y_opt.step()
        y_opt.zero_grad(set_to_none=True)
        if solver == "first_order":
            (gx,) = torch.autograd.grad(upper_loss(x.v, y.v, t), [x.v])
        else:
            gx, v = torch.autograd.grad(upper_loss(x.v, y.v, t), [x.v, y.v])
            gx = gx - implicit(v) if solver == "darts" else gx + implicit(v)
        x.v.grad = gx
        x_opt.step()
        x_opt.zero_grad(set_to_none=True)

    return step, x


# --------------------------------------------------------------------------- mlo


class Lower(mlo.Problem):
    b: torch.Tensor

    def training_step(self, batch):
        return lower_loss(self.module.v, self.upper.module.v, self.b)


class Upper(mlo.Problem):
    t: torch.Tensor

    def training_step(self, batch):
        return upper_loss(self.module.v, self.lower.module.v, self.t)


def mlo_solver(solver: str) -> mlo.solvers.Solver:
    return {
        "first_order": mlo.solvers.FirstOrder(),
        "darts": mlo.solvers.Darts(epsilon=EPSILON),
        "neumann": mlo.solvers.Neumann(iterations=K, alpha=LR),
        "cg": mlo.solvers.CG(iterations=K, tol=0.0),
    }[solver]


def mlo_step(solver: str | mlo.solvers.Solver, n: int, dtype: torch.dtype = torch.float32):
    """mlo's tick with ``solver``: a name of ``SOLVERS`` (configured as the floor's), or a
    solver instance."""
    b, t, x0, y0 = setup(n, dtype)
    x, y = Vec(x0), Vec(y0)
    lower = Lower(
        "lower",
        y,
        torch.optim.SGD(y.parameters(), lr=LR),
        config=mlo.ProblemConfig(solver=mlo_solver(solver) if isinstance(solver, str) else solver),
    )
    upper = Upper("upper", x, torch.optim.SGD(x.parameters(), lr=LR))
    lower.b, upper.t = b, t
    engine = mlo.Engine([upper, lower], {"upper": ["lower"]}, mlo.EngineConfig(progress=False))
    return engine.step, x


# --------------------------------------------------------------------------- Betty


def betty_step(solver: str, n: int, dtype: torch.dtype = torch.float32):
    try:
        from betty.configs import Config
        from betty.problems import ImplicitProblem
    except ImportError:
        return None
    quiet_betty()
    b, t, x0, y0 = setup(n, dtype)
    x, y = Vec(x0), Vec(y0)

    class BLower(ImplicitProblem):
        def training_step(self, batch):
            return lower_loss(self.module.v, self.upper.module.v, b)

    class BUpper(ImplicitProblem):
        def training_step(self, batch):
            return upper_loss(self.module.v, self.lower.module.v, t)

    data = [torch.zeros(1)]
    lower_config = {
        "first_order": Config(),
        "darts": Config(type="darts", darts_alpha=EPSILON),
        "neumann": Config(type="neumann", neumann_iterations=K, neumann_alpha=LR),
        "cg": Config(type="cg", cg_iterations=K),
    }[solver]
    lower = BLower(
        "lower",
        lower_config,
        module=y,
        optimizer=torch.optim.SGD(y.parameters(), lr=LR),
        train_data_loader=data,
        device="cpu",
    )
    upper = BUpper(
        "upper",
        Config(first_order=solver != "first_order", retain_graph=True),
        module=x,
        optimizer=torch.optim.SGD(x.parameters(), lr=LR),
        train_data_loader=data,
        device="cpu",
    )
    return betty_bilevel_step(upper, lower), x


# --------------------------------------------------------------------------- main


def check_same_math(solver: str) -> str | None:
    """mlo against the floor in float64 after 3 ticks (asserted); Betty's difference is
    returned when its update is another one (its darts scale, its cg)."""
    versions = {"by hand": hand_step(solver, 64, torch.float64)}
    versions["mlo"] = mlo_step(solver, 64, torch.float64)
    betty = betty_step(solver, 64, torch.float64)
    if betty is not None:
        versions["Betty"] = betty
    for step, _ in versions.values():
        for _ in range(3):
            step()
    reference = versions["by hand"][1].v.detach()
    error = float((versions["mlo"][1].v.detach() - reference).abs().max())
    assert error < 1e-9, f"{solver}: mlo computes another update (max difference {error})"
    if betty is None:
        return None
    betty_error = float((versions["Betty"][1].v.detach() - reference).abs().max())
    return None if betty_error < 1e-9 else f"{betty_error:.3g}"


def measure(solver: str, n: int, rounds: int) -> dict[str, list[float]]:
    versions = {"by hand": hand_step(solver, n), "mlo": mlo_step(solver, n)}
    betty = betty_step(solver, n)
    if betty is not None:
        versions["Betty"] = betty
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(rounds):
        for name, (step, _) in versions.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), n = {args.n}, "
        f"{args.rounds} interleaved rounds; ms per tick, and the median of the paired "
        "ratios to the hand-written floor"
    )
    print(f"{'solver':12s} {'floor':>8s} {'mlo':>8s} {'Betty':>8s} {'mlo×':>6s} {'Betty×':>7s}")
    notes = []
    for solver in args.solvers:
        differs = check_same_math(solver)
        if differs is not None:
            notes.append(f"Betty's {solver} update differs from the floor's by {differs}")
        times = measure(solver, args.n, args.rounds)
        floor = times["by hand"]
        median = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        ratio = {k: statistics.median(a / b for a, b in zip(v, floor)) for k, v in times.items()}
        betty = (
            (f"{median['Betty']:8.3f}", f"{ratio['Betty']:6.2f}×")
            if "Betty" in times
            else ("-", "-")
        )
        print(
            f"{solver:12s} {median['by hand']:8.3f} {median['mlo']:8.3f} {betty[0]:>8s} "
            f"{ratio['mlo']:5.2f}× {betty[1]:>7s}"
        )
    for note in notes:
        print(f"({note} after 3 float64 ticks: another update, timed for scale)")


if __name__ == "__main__":
    main()
