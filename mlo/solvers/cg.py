from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from ..autodiff import SecondOrder
from ..autodiff.linalg import Vector, axmy, axpy, dot, zeros_like
from .base import ImplicitSolver, Level, register


@register("cg")
class CG(ImplicitSolver):
    r"""Conjugate gradient on \((H + \rho I)\, w = v\) (Rajeswaran et al., 2019; Pedregosa,
    2016).

    Runs ``iterations`` steps, or fewer in effect: once the residual falls below
    \(\mathrm{tol} \cdot \lVert v \rVert\) further steps leave \(w\) unchanged (decided on
    the device, with no host synchronisation). Exact for a quadratic \(f_D\) after
    \(\dim \theta_D\) iterations. Diagnostics (when the engine asks, ``Level.diagnose``):
    ``cg_residual`` (final \(\lVert r \rVert / \lVert v \rVert\)) and
    ``cg_negative_curvature`` (1 when a direction with \(p^\top (H + \rho I) p \le 0\) was
    met, where CG is not valid).
    """

    iterations: int = Field(10, ge=1, description="maximum number of CG iterations")
    tol: float = Field(1e-10, ge=0, description="stop when ‖r‖ ≤ tol·‖v‖")
    ridge: float = Field(0.0, ge=0, description="ρ, added to the Hessian's diagonal")

    def inverse_hvp(
        self, hessian: SecondOrder, v: Vector, level: Level
    ) -> tuple[Vector, dict[str, Tensor]]:
        def matvec(x: Vector) -> Vector:
            hx = hessian.hvp(x)
            return axpy(self.ridge, x, hx) if self.ridge else hx

        w = zeros_like(v)
        r = list(v)
        p = list(v)
        rr = dot(r, r)
        rr0 = rr
        # Below rounding the residual only adds noise (and, differentiated, infinities).
        threshold = max(self.tol**2, torch.finfo(rr.dtype).eps ** 2) * rr
        tiny = torch.finfo(rr.dtype).tiny
        actives, curvatures = [], []  # kept for the diagnostics only
        for _ in range(self.iterations):
            active = rr > threshold
            hp = matvec(p)
            php = dot(p, hp)
            if level.diagnose:
                actives.append(active)
                curvatures.append(php)
            usable = active & (php != 0)
            if php.requires_grad or rr.requires_grad:
                # Differentiated again: every branch finite (where's unused branch gets a
                # zero gradient, times an infinite derivative would be nan).
                step = torch.where(usable, rr / torch.where(usable, php, 1.0), 0.0)
            else:
                step = torch.where(usable, rr / php, 0.0)
            w = axpy(step, p, w)
            r = axmy(step, hp, r)
            rr_next = dot(r, r)
            # Once inactive, the step is 0: w and r stay, and p (kept finite) is not used.
            beta = rr_next / rr.clamp_min(tiny)
            p = axpy(beta, p, r)
            rr = rr_next
        if not level.diagnose:
            return w, {}
        with torch.no_grad():  # a direction with pᵀ(H+ρI)p ≤ 0 met while still active
            negative = (torch.stack(actives) & (torch.stack(curvatures) <= 0)).any()
        residual = (rr / rr0.clamp_min(tiny)).sqrt()
        return w, {"cg_residual": residual, "cg_negative_curvature": negative.to(rr.dtype)}

    def warnings(self, diagnostics: dict[str, float]) -> list[str]:
        out = []
        if diagnostics.get("cg_negative_curvature", 0.0) > 0:
            out.append(
                "CG met negative curvature (the lower objective is not locally convex): "
                "increase ridge, or use 'neumann'/'darts'"
            )
        return out
