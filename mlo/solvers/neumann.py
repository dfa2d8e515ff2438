from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from ..autodiff import SecondOrder
from ..linalg import Vector, add, norm, scale, sub
from .base import ImplicitSolver, Level, register


@register("neumann")
class Neumann(ImplicitSolver):
    """Truncated Neumann series (Lorraine et al., 2020)::

        H⁻¹ v ≈ α Σ_{k=0..K} (I − αH)^k v

    ``K = iterations`` Hessian-vector products. It converges when ``α‖H‖ < 1`` and H is
    positive definite; ``alpha`` defaults to D's learning rate. The diagnostic
    ``neumann_growth`` is the largest ratio ‖term_{k+1}‖/‖term_k‖; above 1 the series
    grows and a warning is raised.
    """

    iterations: int = Field(10, ge=0, description="number of Hessian-vector products K")
    alpha: float | None = Field(None, gt=0, description="series step α; None = D's lr")

    def inverse_hvp(
        self, hessian: SecondOrder, v: Vector, level: Level
    ) -> tuple[Vector, dict[str, Tensor]]:
        alpha = level.learning_rate if self.alpha is None else self.alpha
        term = list(v)
        total = list(v)
        term_norm = norm(term)
        growth = torch.zeros((), dtype=term_norm.dtype, device=term_norm.device)
        for _ in range(self.iterations):
            term = sub(term, scale(alpha, hessian.hvp(term)))
            total = add(total, term)
            new_norm = norm(term)
            growth = torch.maximum(growth, new_norm / term_norm.clamp_min(1e-30))
            term_norm = new_norm
        return scale(alpha, total), {"neumann_growth": growth}

    def warnings(self, diagnostics: dict[str, float]) -> list[str]:
        growth = diagnostics.get("neumann_growth", 0.0)
        if growth > 1.0:
            return [
                f"Neumann series grows (term ratio {growth:.3g} > 1, so α‖H‖ ≥ 1 or H is "
                "not positive definite): lower alpha, or use the 'cg' solver"
            ]
        return []
