from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..autodiff import SecondOrder
from ..autodiff.linalg import Vector, axmy, axpy, dot, zeros_like
from .base import ImplicitSolver, Level, register

_MEMO = "cg.fuse_mixed"  # Level.memo[(_MEMO, the parents' shapes)]: "auto"'s choice


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
    fuse_mixed: bool | Literal["auto"] = Field(
        "auto",
        description="True: take each direction's mixed product in its Hessian-vector "
        "product's pass (one pass fewer; reverse-mode products only); False: one mixed "
        "product of w after the iterations; 'auto': True where that costs less, from the "
        "level's first solve (see mixed_inverse)",
    )

    def inverse_hvp(
        self, hessian: SecondOrder, v: Vector, level: Level
    ) -> tuple[Vector, dict[str, Tensor]]:
        w, _, diagnostics = self._solve(hessian, v, level, None)
        return w, diagnostics

    def mixed_inverse(
        self, hessian: SecondOrder, v: Vector, level: Level, others: Sequence[Tensor]
    ) -> tuple[Vector, dict[str, Tensor]]:
        r"""Where ``fuse_mixed`` holds (``_fuses``), on reverse-mode products (one retained
        graph), each iteration takes \(H p\) and the mixed product of its direction
        \(p\) in one backward pass, and the mixed products are combined with the steps
        that combine \(w\): one pass fewer than a separate mixed product of \(w\) at the
        end, the same number. Elsewhere the mixed product stays one pass of \(w\): each
        forward-mode product evaluates the objective again, and differentiating the
        parents in every one of those holds more (on the DARTS supernet 2.9× a training
        step's live tensors, against 2.0×: docs/benchmarks.md) for 2 % of the time; a
        nested level's total products are not linear in their vector where its lower
        levels' solvers are truncated, so a sum of them is not the product of the sum."""
        if not (
            others and isinstance(hessian, SecondOrder) and self._fuses(hessian, v, level, others)
        ):
            return super().mixed_inverse(hessian, v, level, others)
        _, mixed, diagnostics = self._solve(hessian, v, level, others)
        return mixed, diagnostics

    def _fuses(
        self, hessian: SecondOrder, v: Vector, level: Level, others: Sequence[Tensor]
    ) -> bool:
        r"""``fuse_mixed``, with ``"auto"`` decided once per level and set of parents:
        fused where \((K - 1)\,E \le P\), \(P\) the operations of a Hessian-vector
        product and \(E\) what taking the mixed product in the same pass adds (counted on
        a product of \(v\) by ``mlo.autodiff.op_cost``, from the shapes): where \(K\)
        fused passes cost no more than \(K\) plain ones and a separate mixed pass (taken
        to cost about a fused one). Parents read through cheap operations (architecture
        weights, a proximal term, example weights) add almost nothing; parents read
        through a large matrix product can add more than the Hessian-vector product."""
        if self.fuse_mixed != "auto":
            return self.fuse_mixed
        key = (_MEMO, tuple(tuple(t.shape) for t in others))
        if key not in level.memo:
            plain = hessian.cost(v, hessian.params)
            extra = hessian.cost(v, [*hessian.params, *others]) - plain
            level.memo[key] = (self.iterations - 1) * extra <= plain
        return level.memo[key]

    def _solve(
        self, hessian: SecondOrder, v: Vector, level: Level, others: Sequence[Tensor] | None
    ) -> tuple[Vector | None, Vector | None, dict[str, Tensor]]:
        r"""CG's iterations: \(w\) (``others`` None), or \(\partial^2 f_D / \partial y
        \partial\theta_D \cdot w\) for the tensors ``others``, and the diagnostics."""

        def matvec(x: Vector) -> tuple[Vector, Vector | None]:
            if others is None:
                hx, mx = hessian.hvp(x), None
            else:
                hx, mx = hessian.hvp_and_mixed(x, others)
            return (axpy(self.ridge, x, hx) if self.ridge else hx), mx

        # w = Σ step_k p_k; its mixed product, Σ step_k M p_k, is gathered the same way.
        w = zeros_like(v) if others is None else None
        mixed = None if others is None else zeros_like(others)
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
            hp, mp = matvec(p)
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
            if mp is None:
                w = axpy(step, p, w)
            else:
                mixed = axpy(step, mp, mixed)
            r = axmy(step, hp, r)
            rr_next = dot(r, r)
            # Once inactive, the step is 0: w and r stay, and p (kept finite) is not used.
            beta = rr_next / rr.clamp_min(tiny)
            p = axpy(beta, p, r)
            rr = rr_next
        if not level.diagnose:
            return w, mixed, {}
        with torch.no_grad():  # a direction with pᵀ(H+ρI)p ≤ 0 met while still active
            negative = (torch.stack(actives) & (torch.stack(curvatures) <= 0)).any()
        residual = (rr / rr0.clamp_min(tiny)).sqrt()
        diagnostics = {"cg_residual": residual, "cg_negative_curvature": negative.to(rr.dtype)}
        return w, mixed, diagnostics

    def products(self, unroll_steps: int) -> int:
        """The gradient and ``iterations`` Hessian-vector products, each with its mixed
        product when ``fuse_mixed`` is True; otherwise one mixed product more (``"auto"``
        is counted so until a level's first solve decides: ``products_on``)."""
        return self.iterations + (1 if self.fuse_mixed is True else 2)

    def products_on(self, unroll_steps: int, memo: Mapping[Any, Any], apart: bool) -> int:
        """One pass fewer where the mixed products are taken in the Hessian-vector
        products' passes: ``fuse_mixed=True``, or ``"auto"`` once it chose so."""
        chosen = any(v for k, v in memo.items() if k[0] == _MEMO)
        fused = self.fuse_mixed is True or (self.fuse_mixed == "auto" and chosen)
        return self.iterations + (1 if fused and not apart else 2)

    def warnings(self, diagnostics: dict[str, float]) -> list[str]:
        out = []
        if diagnostics.get("cg_negative_curvature", 0.0) > 0:
            out.append(
                "CG met negative curvature (the lower objective is not locally convex): "
                "increase ridge, or use 'neumann'/'darts'"
            )
        return out
