from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..autodiff import functional_optim, gradient
from ..autodiff.linalg import Vector, dot, norm, sub
from .base import Level, Solver, SolverResult, register, split_by_parents


@register("unroll")
class Unroll(Solver):
    r"""Exact reverse-mode differentiation through D's most recent optimizer steps.

    The engine records the state before each of D's last ``unroll_steps`` updates (its
    parameters, optimizer state, hyperparameters and batch). This solver replays those
    steps with differentiable SGD/Adam/AdamW steps, from the oldest recorded state, with
    the parents' parameters as they are now, and returns
    \((\partial\theta_D^{(K)} / \partial\theta_U)^\top v\).

    Each replayed step uses the gradient D was trained by:
    \(\partial f_D / \partial\theta_D\) for a level that does not read its lower levels
    (or with ``jacobian="partial"``), and for a nested level its total gradient \(g_D\)
    (``Level.total_gradient``, D's lower levels at their current values and best
    responses), so that the replay differentiates the training procedure through those
    total gradients. Under data parallelism each rank replays its own shard of every
    recorded batch and the replayed gradients are averaged over the ranks
    (differentiably, ``mlo.parallel.distributed.Reducer.mean``), as D's steps were.
    Diagnostic (when the engine asks, ``Level.diagnose``) ``unroll_replay_error``:
    \(\lVert \theta_D^{(K)} - \theta_D \rVert / \lVert \theta_D \rVert\), the distance
    between the replayed end point and D's actual parameters; it is 0 up to rounding
    unless the parents (or, for a nested level, its lower levels) changed during the
    window.
    """

    needs_trajectory = True
    supports_total: ClassVar[bool] = True

    def products(self, unroll_steps: int) -> int:
        """One gradient per replayed step, and one backward pass through them."""
        return unroll_steps + 1

    def vjp(self, level: Level, v: Vector, parents: Sequence[Sequence[Tensor]]) -> SolverResult:
        trajectory = level.trajectory
        flat = [t for group in parents for t in group]
        if trajectory is None or len(trajectory) == 0:
            return SolverResult([[torch.zeros_like(t) for t in group] for group in parents])
        records = list(trajectory.records)
        first = records[0]
        params = [p.clone().requires_grad_(True) for p in first.params]
        state = [dict(s) for s in first.optimizer_state]
        for record in records:
            if level.total_gradient is not None:
                grads = level.total_gradient(params, record.batch)
            else:
                loss = level.objective(params, batch=record.batch)
                grads = gradient(loss, params, create_graph=True)
            if level.average is not None:
                # Under data parallelism D was trained by the global batch's gradient.
                grads = level.average(grads)
            if level.grad_clip is not None:
                grads = _clip(grads, level.grad_clip)
            params, state = functional_optim.step(params, grads, state, record.rules)
        outputs = [p for p in params if p.requires_grad]
        vectors = [vi for p, vi in zip(params, v) if p.requires_grad]
        if outputs:
            vjp = list(
                torch.autograd.grad(
                    outputs,
                    flat,
                    grad_outputs=vectors,
                    create_graph=level.create_graph,
                    allow_unused=True,
                    materialize_grads=True,
                )
            )
        else:
            vjp = [torch.zeros_like(t) for t in flat]
        if not level.diagnose:
            return SolverResult(split_by_parents(vjp, parents))
        with torch.no_grad():
            current = [p.detach() for p in level.params]
            error = norm(sub([p.detach() for p in params], current)) / norm(current).clamp_min(
                1e-30
            )
        return SolverResult(split_by_parents(vjp, parents), {"unroll_replay_error": error})


def _clip(grads: Vector, max_norm: float) -> Vector:
    """Differentiable version of ``torch.nn.utils.clip_grad_norm_``."""
    total = dot(grads, grads).sqrt()
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * factor for g in grads]
