"""Tutorial 3: write a solver, register it, use it by name, and test it against a closed
form the way mlo's own solvers are tested.

The solver: steepest descent on ``½wᵀHw − vᵀw`` with an exact line search along the
residual, a way to get ``w ≈ H⁻¹v`` with one Hessian-vector product per iteration and no
step size to tune (slower than conjugate gradients; it is here for what it shows).

    python docs/tutorials/own_solver.py
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

import mlo
from mlo.solvers import ImplicitSolver, register

# ------------------------------------------------------------------------ the solver


@register("steepest_descent")
class SteepestDescent(ImplicitSolver):
    """``w ≈ H⁻¹v`` by steepest descent with exact line search::

        r = v − Hw,   γ = rᵀr / rᵀHr,   w ← w + γr,   r ← r − γHr

    One Hessian-vector product per iteration. Diagnostic ``sd_residual``: the final
    ``‖r‖/‖v‖``. Everything stays on the device: no ``.item()`` in the loop.
    """

    iterations: int = Field(50, ge=1, description="Hessian-vector products")

    def inverse_hvp(self, hessian, v, level):
        w = [torch.zeros_like(t) for t in v]
        r = list(v)
        for _ in range(self.iterations):
            hr = hessian.hvp(r)
            rr = sum((a * a).sum() for a in r)
            rhr = sum((a * b).sum() for a, b in zip(r, hr))
            # Once r is exactly zero the step is 0/0; keep w where it is then.
            gamma = torch.where(rhr > 0, rr / torch.where(rhr > 0, rhr, 1.0), 0.0)
            w = [wi + gamma * ri for wi, ri in zip(w, r)]
            r = [ri - gamma * hri for ri, hri in zip(r, hr)]
        residual = torch.sqrt(sum((a * a).sum() for a in r) / sum((a * a).sum() for a in v))
        return w, {"sd_residual": residual}

    def warnings(self, diagnostics):
        residual = diagnostics.get("sd_residual", 0.0)
        if residual > 1e-3:
            return [f"steepest descent stopped at relative residual {residual:.2g}: add iterations"]
        return []


# ---------------------------------------------------------- a problem with a closed form

DTYPE, DIM, RHO = torch.float64, 8, 0.1


class Vector(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(value.clone())


def quadratic(seed: int = 0):
    """Lower ``f = ½yᵀAy − yᵀBx``, upper ``F = ½‖y − t‖² + ½ρ‖x‖²``; the lower level at
    its best response ``y* = A⁻¹Bx``, where the hypergradient is
    ``dF/dx = ρx + BᵀA⁻¹(y* − t)``."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(DIM, DIM, generator=gen, dtype=DTYPE)
    a = m @ m.T / DIM + torch.eye(DIM, dtype=DTYPE)
    b = torch.randn(DIM, DIM, generator=gen, dtype=DTYPE)
    t = torch.randn(DIM, generator=gen, dtype=DTYPE)
    x = torch.randn(DIM, generator=gen, dtype=DTYPE)
    y = torch.linalg.solve(a, b @ x)
    truth = RHO * x + b.T @ torch.linalg.solve(a, y - t)
    return a, b, t, x, y, truth


def engine_with(solver, seed: int = 0):
    a, b, t, x0, y0, truth = quadratic(seed)

    class Lower(mlo.Problem):
        def training_step(self, batch):
            y = self.module.x
            return 0.5 * y @ a @ y - y @ b @ self.upper.module.x

    class Upper(mlo.Problem):
        def training_step(self, batch):
            y, x = self.lower.module.x, self.module.x
            return 0.5 * (y - t) @ (y - t) + 0.5 * RHO * x @ x

    low, up = Vector(y0), Vector(x0)
    lower = Lower(
        "lower",
        low,
        torch.optim.SGD(low.parameters(), lr=0.1),
        config=mlo.ProblemConfig(solver=solver),
    )
    upper = Upper("upper", up, torch.optim.SGD(up.parameters(), lr=0.1))
    engine = mlo.Engine([upper, lower], {"upper": ["lower"]}, mlo.EngineConfig(progress=False))
    return engine, truth


def relative_error(solver) -> float:
    engine, truth = engine_with(solver)
    ours = engine.hypergradient("upper")["x"]
    return float((ours - truth).norm() / truth.norm())


def main() -> dict[str, float]:
    errors = {}
    for iterations in (2, 10, 50, 200):
        errors[f"steepest_descent({iterations})"] = relative_error(
            SteepestDescent(iterations=iterations)
        )
    errors["by name"] = relative_error("steepest_descent")  # the registry's default (50)
    errors[f"cg({DIM})"] = relative_error(mlo.solvers.CG(iterations=DIM))
    for name, error in errors.items():
        print(f"{name:24s} relative error {error:.2e}")
    # Diagnostics: kept on the device during training, read when asked for.
    engine, _ = engine_with(SteepestDescent(iterations=2))
    engine.step()
    diagnostics = engine.diagnostics()
    print("diagnostics after one tick:", diagnostics)
    print("warnings:", engine.problems["lower"].config.solver.warnings(diagnostics["lower"]))
    return {**errors, "residual after 2": diagnostics["lower"]["sd_residual"]}


if __name__ == "__main__":
    main()
