from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from ..autodiff import SecondOrder
from ..autodiff.linalg import Vector, add, norm, scale, sub
from .base import ImplicitSolver, Level, register


@register("neumann")
class Neumann(ImplicitSolver):
    r"""Truncated Neumann series (Lorraine et al., 2020):

    \[
    H^{-1} v \approx \alpha \sum_{k=0}^{K} (I - \alpha H)^k v
    \]

    \(K\) = ``iterations`` Hessian-vector products; ``alpha`` defaults to D's learning
    rate. The series converges when every eigenvalue \(\lambda\) of \(H\) has
    \(0 < \alpha\lambda < 2\) and decays monotonically when \(\alpha \lVert H \rVert < 1\).
    Diagnostics (when the engine asks for them, ``Level.diagnose``), computed on the
    device from the products the series needs anyway:

    - ``neumann_alpha_h``: the largest \(\alpha \lVert Hp \rVert / \lVert p \rVert\) over
      the terms \(p\), a lower bound on \(\alpha \lVert H \rVert\); at or above 1 a warning
      is logged;
    - ``neumann_growth``: the largest ratio \(\lVert p_{k+1} \rVert / \lVert p_k \rVert\);
      above 1 the series grows.
    """

    iterations: int = Field(10, ge=0, description="number of Hessian-vector products K")
    alpha: float | None = Field(None, gt=0, description="series step α; None = D's lr")

    def inverse_hvp(
        self, hessian: SecondOrder, v: Vector, level: Level
    ) -> tuple[Vector, dict[str, Tensor]]:
        alpha = level.default_step(self.alpha, "neumann", "alpha")
        term = list(v)
        total = list(v)
        # The norms are kept (scalars on the device) and the diagnostics formed from them
        # once, after the loop: two reductions per product instead of eight operations.
        diagnose = level.diagnose
        term_norms = [norm(term)] if diagnose else []
        step_norms = []
        for _ in range(self.iterations):
            step = scale(alpha, hessian.hvp(term))
            term = sub(term, step)
            total = add(total, term)
            if diagnose:
                step_norms.append(norm(step))
                term_norms.append(norm(term))
        if not diagnose:
            return scale(alpha, total), {}
        if not step_norms:
            zero = torch.zeros_like(term_norms[0])
            return scale(alpha, total), {"neumann_growth": zero, "neumann_alpha_h": zero}
        before = torch.stack(term_norms[:-1]).clamp_min(1e-30)
        alpha_h = (torch.stack(step_norms) / before).max()
        growth = (torch.stack(term_norms[1:]) / before).max()
        return scale(alpha, total), {"neumann_growth": growth, "neumann_alpha_h": alpha_h}

    def warnings(self, diagnostics: dict[str, float]) -> list[str]:
        growth = diagnostics.get("neumann_growth", 0.0)
        alpha_h = diagnostics.get("neumann_alpha_h", 0.0)
        if growth > 1.0:
            return [
                f"Neumann series grows (term ratio {growth:.3g} > 1, α‖H‖ ≥ {alpha_h:.3g}): "
                "the hypergradient is wrong; lower alpha, or use the 'cg' solver"
            ]
        if alpha_h >= 1.0:
            return [
                f"Neumann series may not converge (α‖H‖ ≥ {alpha_h:.3g} ≥ 1): lower alpha "
                "below 1/‖H‖"
            ]
        return []
