"""The engine's per-update overhead: a tiny 2-level tick, where the arithmetic is cheap and
anything around the autograd calls shows.

Two levels whose parameters are n-dimensional vectors (n = 2000) with quadratic
objectives, the lower one trained by SGD and differentiated with the ``darts`` solver:

    lower  y:  f(y; x) = ½‖y‖² − yᵀ B x            (B fixed, n × n)
    upper  x:  F(x; y) = ½‖y − t‖² + ½ρ‖x‖²

One tick: one SGD step on y, then one SGD step on x with the darts hypergradient
``∇_x F − ξ [∇_x f(y + r v) − ∇_x f(y − r v)] / (2r)``, ``v = ∇_y F``, ``r = ε/‖v‖``.
Versions: the same math hand-written with the same autograd calls (the floor), mlo, and
Betty (betty-ml 0.1.1, its ``darts`` type). Rounds interleave the versions; the script
prints the median time per tick and the medians of the paired ratios to the floor.

    python benchmarks/overhead.py [--n 2000] [--rounds 200] [--threads 1]
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
from common import quiet_betty

RHO, LR, EPSILON = 0.1, 0.1, 0.01


class Vec(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(value.clone())


def setup(n: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(n, n, generator=gen, dtype=dtype) / n**0.5
    t = torch.randn(n, generator=gen, dtype=dtype)
    x0 = torch.randn(n, generator=gen, dtype=dtype)
    y0 = torch.randn(n, generator=gen, dtype=dtype)
    return b, t, x0, y0


def lower_loss(y, x, b):
    return 0.5 * y @ y - y @ (b @ x)


def upper_loss(x, y, t):
    return 0.5 * (y - t) @ (y - t) + 0.5 * RHO * x @ x


# --------------------------------------------------------------------------- by hand


def hand_step(n: int, dtype: torch.dtype = torch.float32):
    b, t, x0, y0 = setup(n, dtype)
    x, y = Vec(x0), Vec(y0)
    x_opt, y_opt = torch.optim.SGD(x.parameters(), lr=LR), torch.optim.SGD(y.parameters(), lr=LR)

    def step() -> None:
        (g,) = torch.autograd.grad(lower_loss(y.v, x.v, b), [y.v])
        y.v.grad = g
        y_opt.step()
        y_opt.zero_grad(set_to_none=True)
        gx, v = torch.autograd.grad(upper_loss(x.v, y.v, t), [x.v, y.v])
        r = EPSILON / torch.linalg.vector_norm(v)
        theta = y.v.detach()
        (plus,) = torch.autograd.grad(lower_loss(theta + r * v, x.v, b), [x.v])
        (minus,) = torch.autograd.grad(lower_loss(theta - r * v, x.v, b), [x.v])
        x.v.grad = gx - LR * (plus - minus) / (2 * r)
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


def mlo_step(n: int, dtype: torch.dtype = torch.float32):
    b, t, x0, y0 = setup(n, dtype)
    x, y = Vec(x0), Vec(y0)
    lower = Lower(
        "lower",
        y,
        torch.optim.SGD(y.parameters(), lr=LR),
        config=mlo.ProblemConfig(solver=mlo.solvers.Darts(epsilon=EPSILON)),
    )
    upper = Upper("upper", x, torch.optim.SGD(x.parameters(), lr=LR))
    lower.b, upper.t = b, t
    engine = mlo.Engine([upper, lower], {"upper": ["lower"]}, mlo.EngineConfig(progress=False))
    return engine.step, x


# --------------------------------------------------------------------------- Betty


def betty_step(n: int, dtype: torch.dtype = torch.float32):
    try:
        from betty.configs import Config, EngineConfig
        from betty.engine import Engine
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
    lower = BLower(
        "lower",
        Config(type="darts", darts_alpha=EPSILON),
        module=y,
        optimizer=torch.optim.SGD(y.parameters(), lr=LR),
        train_data_loader=data,
        device="cpu",
    )
    upper = BUpper(
        "upper",
        Config(first_order=True, retain_graph=True),
        module=x,
        optimizer=torch.optim.SGD(x.parameters(), lr=LR),
        train_data_loader=data,
        device="cpu",
    )
    engine = Engine(
        [upper, lower],
        config=EngineConfig(train_iters=1, logger_type="none"),
        dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}},
    )

    def step() -> None:
        engine.global_step += 1
        engine.train_step()

    return step, x


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # The same math: in float64 (where darts' finite difference is not rounding noise),
    # after a few ticks every version holds the same x.
    check = {"by hand": hand_step(64, torch.float64), "mlo": mlo_step(64, torch.float64)}
    betty = betty_step(64, torch.float64)
    if betty is not None:
        check["Betty"] = betty
    for step, _ in check.values():
        for _ in range(3):
            step()
    reference = check["by hand"][1].v.detach()
    error = float((check["mlo"][1].v.detach() - reference).abs().max())
    assert error < 1e-9, f"mlo computes another update (max difference {error})"
    if "Betty" in check:
        # Not asserted: Betty's darts type orders and scales its update differently.
        betty_error = float((check["Betty"][1].v.detach() - reference).abs().max())
    versions = {"by hand": hand_step(args.n), "mlo": mlo_step(args.n)}
    if betty is not None:
        versions["Betty"] = betty_step(args.n)
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(args.rounds):
        for name, (step, _) in versions.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    floor = times["by hand"]
    if "Betty" in check:
        print(f"(Betty's x after 3 ticks differs from the floor's by {betty_error:.3g}: ")
        print(" its darts update is not the same math; its time is shown for scale)")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), n = {args.n}, darts, "
        f"{args.rounds} interleaved rounds"
    )
    for name, values in times.items():
        ratios = [a / b for a, b in zip(values, floor)]
        print(
            f"{name:8s} {1e3 * statistics.median(values):7.3f} ms/tick   "
            f"{statistics.median(ratios):5.2f}× the hand-written floor"
        )


if __name__ == "__main__":
    main()
