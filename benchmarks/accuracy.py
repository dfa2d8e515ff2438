"""Hypergradient accuracy against the number of Hessian-vector products, for mlo's
``cg``, ``neumann``, ``darts``, ``sama`` and ``unroll`` and Betty's ``cg``, ``neumann`` and
``darts``,
in float64, against a dense solve, on two bilevel problems:

- ``quadratic``: a 200-dimensional quadratic, A SPD with eigenvalues in [1, κ]::

      lower  y:  f(y; x) = ½ yᵀA y − yᵀB x        upper  x:  F = ½‖y − t‖² + ½ρ‖x‖²

- ``mlp``: a logistic-regression inner problem on the features of a small MLP, the MLP's
  weights being the upper level::

      lower  w:  f(w; θ) = BCE(φ_θ(X_tr) w, y_tr) + ½λ‖w‖²
      upper  θ:  F(θ; w) = BCE(φ_θ(X_va) w, y_va)

The lower level sits at its best response (exact for the quadratic, Newton's method to
machine precision for the logistic problem); the truth is ``∇_x F − ∂²f/∂x∂y · H⁻¹ ∇_y F``
with the Hessian and the mixed derivatives formed densely. ``cg`` and ``neumann`` spend
K products (K = 1 … 200); ``darts`` spends two gradient evaluations whatever K (a constant
line); ``sama`` too, with an Adam lower level whose second moments precondition the
direction (Adam trains the lower level from 0 to fill them, then the lower level is put at
its best response). ``unroll`` trains the lower level K SGD steps from 0 and differentiates through
them: K products in reverse, and its error against the fixed point's truth falls as the K
steps approach the best response. Betty (betty-ml 0.1.1) computes on the same state
through its own ``backward``: its ``neumann`` is the same series, its ``cg`` is not a
conjugate-gradient solve, and its ``darts`` has no ξ (ξ = 1). Prints the relative error per
solver and K and writes a log-scale plot per problem.

    python benchmarks/accuracy.py [--n 200] [--kappa 50] [--plot docs/accuracy.png]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mlo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log_plot, quiet_betty

DTYPE = torch.float64
RHO = 0.1

Objective = Callable[[torch.Tensor, nn.Module], torch.Tensor]


class Vec(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(value.clone())


@dataclass
class Case:
    """A bilevel problem: ``lower(y, upper_module)`` and ``upper(y, upper_module)``, the
    upper module's factory, the best response, the truth (flattened over the upper
    module's parameters) and the step (Neumann's α, darts' ξ, unroll's learning rate)."""

    name: str
    lower: Objective
    upper: Objective
    make_upper: Callable[[], nn.Module]
    y_star: torch.Tensor
    truth: torch.Tensor
    step: float


def quadratic(n: int, kappa: float) -> Case:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    a = q @ torch.diag(torch.linspace(1.0, kappa, n, dtype=DTYPE)) @ q.T
    b = torch.randn(n, n, generator=gen, dtype=DTYPE) / n**0.5
    t = torch.randn(n, generator=gen, dtype=DTYPE)
    x = torch.randn(n, generator=gen, dtype=DTYPE)
    y = torch.linalg.solve(a, b @ x)
    truth = RHO * x + b.T @ torch.linalg.solve(a, y - t)

    def lower(v: torch.Tensor, up: nn.Module) -> torch.Tensor:
        return 0.5 * v @ a @ v - v @ (b @ up.v)

    def upper(v: torch.Tensor, up: nn.Module) -> torch.Tensor:
        return 0.5 * (v - t) @ (v - t) + 0.5 * RHO * up.v @ up.v

    # 1/λ_max: the stable Neumann step and darts' ξ.
    return Case(f"{n}-dim SPD quadratic, condition number {kappa:g}", lower, upper,
                lambda: Vec(x), y, truth, 1.0 / kappa)  # fmt: skip


def logistic_mlp(features: int = 10, hidden: int = 6, examples: int = 200) -> Case:
    gen = torch.Generator().manual_seed(1)
    x_tr = torch.randn(examples, features, generator=gen, dtype=DTYPE)
    x_va = torch.randn(examples, features, generator=gen, dtype=DTYPE)
    teacher = torch.randn(features, generator=gen, dtype=DTYPE)
    y_tr, y_va = (x_tr @ teacher > 0).to(DTYPE), (x_va @ teacher > 0).to(DTYPE)
    lam = 0.1
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(features, hidden), nn.Tanh()).to(DTYPE)
    state = {k: v.clone() for k, v in mlp.state_dict().items()}

    def make_upper() -> nn.Module:
        net = nn.Sequential(nn.Linear(features, hidden), nn.Tanh()).to(DTYPE)
        net.load_state_dict(state)
        return net

    def logits(w: torch.Tensor, up: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return up(x) @ w[:-1] + w[-1]

    def lower(w: torch.Tensor, up: nn.Module) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits(w, up, x_tr), y_tr)
        return loss + 0.5 * lam * w @ w

    def upper(w: torch.Tensor, up: nn.Module) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits(w, up, x_va), y_va)

    # The best response by Newton's method (strongly convex: λ > 0), then the truth from
    # the dense Hessian and mixed derivatives.
    net = make_upper()
    w = torch.zeros(hidden + 1, dtype=DTYPE)
    for _ in range(50):
        grad = torch.func.grad(lower)(w, net)
        w = w - torch.linalg.solve(torch.func.hessian(lower)(w, net), grad)
    params = dict(net.named_parameters())

    def lower_of(p: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, p, (x_tr,)) @ w[:-1] + w[-1]

    def grad_w(p: dict[str, torch.Tensor]) -> torch.Tensor:
        def f(w: torch.Tensor) -> torch.Tensor:
            loss = F.binary_cross_entropy_with_logits(lower_of(p, w), y_tr)
            return loss + 0.5 * lam * w @ w

        return torch.func.grad(f)(w)

    mixed = torch.func.jacrev(grad_w)(params)  # {name: (dim w, *param shape)}
    hessian = torch.func.hessian(lower)(w, net)
    upper_w = torch.func.grad(upper)(w, net)
    solve = torch.linalg.solve(hessian, upper_w)

    def upper_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.func.functional_call(net, p, (x_va,)) @ w[:-1] + w[-1]
        return F.binary_cross_entropy_with_logits(out, y_va)

    direct = torch.func.grad(upper_of)(params)
    truth = torch.cat(
        [
            (direct[k] - torch.tensordot(solve, mixed[k], dims=([0], [0]))).reshape(-1)
            for k in params
        ]
    )
    step = 1.0 / float(torch.linalg.eigvalsh(hessian.detach()).max())
    return Case(
        f"logistic regression on a {features}→{hidden} tanh MLP's features",
        lower,
        upper,
        make_upper,
        w,
        truth,
        step,
    )


def _flat(grads: dict[str, torch.Tensor], module: nn.Module) -> torch.Tensor:
    return torch.cat([grads[k].reshape(-1) for k, _ in module.named_parameters()])


def mlo_engine(
    case: Case,
    solver,
    start: torch.Tensor,
    upper_lr: float,
    unroll_steps: int = 1,
    adam_lr: float | None = None,
):
    class Lower(mlo.Problem):
        def training_step(self, batch):
            return case.lower(self.module.v, self.upper.module)

    class Upper(mlo.Problem):
        def training_step(self, batch):
            return case.upper(self.lower.module.v, self.module)

    lower_module, upper_module = Vec(start), case.make_upper()
    if adam_lr is None:
        optimizer = torch.optim.SGD(lower_module.parameters(), lr=case.step)
    else:
        optimizer = torch.optim.Adam(lower_module.parameters(), lr=adam_lr)
    lower = Lower(
        "lower",
        lower_module,
        optimizer,
        config=mlo.ProblemConfig(solver=solver, unroll_steps=unroll_steps),
    )
    upper = Upper("upper", upper_module, torch.optim.SGD(upper_module.parameters(), lr=upper_lr))
    engine = mlo.Engine([upper, lower], {"upper": ["lower"]}, mlo.EngineConfig(progress=False))
    return engine, upper_module


def hypergradient(case: Case, solver) -> torch.Tensor:
    engine, upper_module = mlo_engine(case, solver, case.y_star, upper_lr=case.step)
    return _flat(engine.hypergradient("upper"), upper_module)


def unrolled(case: Case, steps: int) -> torch.Tensor:
    """mlo's ``unroll``: ``steps`` SGD steps of the lower level from 0 (the upper level's
    learning rate is 0, so one engine tick only trains the lower level), then the
    hypergradient through them."""
    start = torch.zeros_like(case.y_star)
    engine, upper_module = mlo_engine(case, mlo.solvers.Unroll(), start, 0.0, steps)
    engine.step()
    return _flat(engine.hypergradient("upper"), upper_module)


ADAM_LR = 0.01
ADAM_STEPS = 500


def sama_hypergradient(case: Case) -> torch.Tensor:
    """mlo's ``sama`` with an Adam lower level: Adam (lr ``ADAM_LR``) trains the lower
    level ``ADAM_STEPS`` steps from 0, which fills its second moments, then the lower
    level is set to its best response and the hypergradient read there (ξ is Adam's
    learning rate, the paper's one-step reading)."""
    start = torch.zeros_like(case.y_star)
    engine, upper_module = mlo_engine(case, mlo.solvers.Sama(), start, 0.0, adam_lr=ADAM_LR)
    for _ in range(ADAM_STEPS):
        engine.step()
    with torch.no_grad():
        engine.problems["lower"].module.v.copy_(case.y_star)
    return _flat(engine.hypergradient("upper"), upper_module)


def betty_hypergradient(case: Case, kind: str, k: int) -> torch.Tensor | None:
    """Betty's hypergradient of the upper level at the same state, by its own backward;
    ``None`` without betty-ml."""
    try:
        from betty.configs import Config, EngineConfig
        from betty.engine import Engine
        from betty.problems import ImplicitProblem
    except ImportError:
        return None
    quiet_betty()

    class Lower(ImplicitProblem):
        def training_step(self, batch):
            return case.lower(self.module.v, self.upper.module)

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            return case.upper(self.lower.module.v, self.module)

    config = {
        "cg": Config(type="cg", cg_iterations=k),
        "neumann": Config(type="neumann", neumann_iterations=k, neumann_alpha=case.step),
        "darts": Config(type="darts"),
    }[kind]
    data = [(torch.zeros(1, dtype=DTYPE),)]
    low, up = Vec(case.y_star), case.make_upper()
    lower = Lower(
        "lower",
        config,
        module=low,
        optimizer=torch.optim.SGD(low.parameters(), lr=case.step),
        train_data_loader=data,
        device="cpu",
    )
    upper = Upper(
        "upper",
        Config(retain_graph=True),
        module=up,
        optimizer=torch.optim.SGD(up.parameters(), lr=case.step),
        train_data_loader=data,
        device="cpu",
    )
    Engine(
        [upper, lower],
        config=EngineConfig(train_iters=1),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )
    lower.cur_batch = data[0]
    loss = upper.training_step(data[0])
    upper.backward(loss, upper.trainable_parameters(), upper.paths)
    return torch.cat([p.grad.detach().reshape(-1) for p in up.parameters()])


cosines: dict[str, dict[str, float]] = {}
"""The first-order solvers' direction: the cosine of their hypergradient with the truth."""


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def errors(case: Case, budgets: list[int]) -> dict[str, list[float]]:
    curves: dict[str, list[float]] = {"cg": [], "neumann": [], "darts": [], "unroll": []}

    def error(got: torch.Tensor) -> float:
        return float((got - case.truth).norm() / case.truth.norm())

    sama = sama_hypergradient(case).detach()  # two gradient evaluations, whatever K
    curves["sama (Adam)"] = [error(sama)] * len(budgets)
    darts = hypergradient(case, mlo.solvers.Darts(xi=case.step)).detach()
    cosines[case.name] = {
        "darts": cosine(darts, case.truth),
        "sama (Adam)": cosine(sama, case.truth),
    }

    for k in budgets:
        solvers = {
            "cg": mlo.solvers.CG(iterations=k, tol=0.0),
            "neumann": mlo.solvers.Neumann(iterations=k, alpha=case.step),
            "darts": mlo.solvers.Darts(xi=case.step),
        }
        for name, solver in solvers.items():
            curves[name].append(error(hypergradient(case, solver)))
        curves["unroll"].append(error(unrolled(case, k)))
        for kind in ("cg", "neumann", "darts"):
            got = betty_hypergradient(case, kind, k)
            if got is not None:
                curves.setdefault(f"Betty {kind}", []).append(error(got))
    return curves


def report(case: Case, budgets: list[int], curves: dict[str, list[float]]) -> None:
    print(f"{case.name}, float64; relative error of the hypergradient")
    print("products " + "".join(f"{name:>16s}" for name in curves))
    for i, k in enumerate(budgets):
        print(f"{k:8d} " + "".join(f"{curves[name][i]:16.3e}" for name in curves))
    if case.name in cosines:
        said = ", ".join(f"{n} {c:.3f}" for n, c in cosines[case.name].items())
        print(f"first-order directions, cosine with the truth: {said}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="dimension of the quadratic")
    parser.add_argument("--kappa", type=float, default=50.0, help="condition number of A")
    parser.add_argument(
        "--plot", type=Path, help="PNG of the quadratic's curves (and NAME_mlp.png)"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    square = [k for k in (1, 2, 5, 10, 20, 50, 100, 200) if k <= args.n]
    cases = (
        (quadratic(args.n, args.kappa), square, ""),
        (logistic_mlp(), [1, 2, 3, 5, 7, 10, 20, 50], "_mlp"),
    )
    for case, budgets, suffix in cases:
        curves = errors(case, budgets)
        report(case, budgets, curves)
        if args.plot is not None:
            path = args.plot.with_name(args.plot.stem + suffix + args.plot.suffix)
            named = {
                (k if k.startswith("Betty") else f"mlo {k}"): [max(v, 1e-17) for v in values]
                for k, values in curves.items()
            }
            log_plot(path, budgets, named, "Hessian-vector products", "relative error", True)
            print(f"plot: {path}")


if __name__ == "__main__":
    main()
