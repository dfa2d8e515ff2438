r"""MINRES (Paige and Saunders, 1975): \(A x = b\) for a symmetric, possibly indefinite
\(A\) given by its products, on lists of tensors.

Lanczos builds an orthonormal basis of the Krylov space of \(b\); a QR factorisation of
its tridiagonal matrix, updated by one Givens rotation per step, gives the iterate that
minimises \(\lVert b - A x\rVert\) over that space. For a system of dimension \(n\) it is
exact after \(n\) steps (up to rounding). Steps run without host synchronisation: once
the Lanczos vector vanishes (the space is exhausted) the remaining steps leave the
iterate as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .linalg import Vector, axpy, dot, scale, zeros_like


def minres(matvec: Callable[[Vector], Vector], b: Vector, iterations: int) -> Vector:
    """An approximate solution of ``matvec(x) = b`` after ``iterations`` steps."""
    x = zeros_like(b)
    beta1 = dot(b, b).sqrt()
    tiny = torch.finfo(beta1.dtype).tiny
    floor = 16 * torch.finfo(beta1.dtype).eps * beta1  # below it: exhausted or converged
    zero = torch.zeros_like(beta1)
    # Lanczos: v_prev, v (unit), beta (the norm that normalised v)
    v_prev = zeros_like(b)
    beta = beta1
    v = scale(1.0 / beta1.clamp_min(tiny), b)
    # QR of the tridiagonal matrix: the last two rotations and the search directions
    cs, sn = -torch.ones_like(beta1), zero
    dbar, epsilon = zero, zero
    phibar = beta1
    w, w_prev = zeros_like(b), zeros_like(b)
    for _ in range(iterations):
        active = (beta > floor) & (phibar.abs() > floor)
        av = matvec(v)
        alpha = dot(v, av)
        nxt = axpy(-alpha, v, av)
        nxt = axpy(-beta, v_prev, nxt)
        beta_next = dot(nxt, nxt).sqrt()
        # previous rotations applied to the new column (beta, alpha, beta_next)
        eps_old = epsilon
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        epsilon = sn * beta_next
        dbar = -cs * beta_next
        gamma = (gbar * gbar + beta_next * beta_next).sqrt().clamp_min(tiny)
        cs, sn = gbar / gamma, beta_next / gamma
        phi = cs * phibar
        phibar = torch.where(active, sn * phibar, phibar)
        w_new = [(vi - eps_old * wp - delta * wi) / gamma for vi, wp, wi in zip(v, w_prev, w)]
        moved = axpy(phi, w_new, x)
        # Once inactive, nothing changes (the unused branch may hold infinities).
        x = [torch.where(active, m, xi) for m, xi in zip(moved, x)]
        w_prev, w = w, [torch.where(active, wn, wi) for wn, wi in zip(w_new, w)]
        v_prev = v
        v = scale(torch.where(active, 1.0 / beta_next.clamp_min(tiny), zero), nxt)
        beta = torch.where(active, beta_next, zero)
    return x
