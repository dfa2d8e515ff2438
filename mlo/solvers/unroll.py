from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from ..autodiff import functional_optim, gradient, products
from ..autodiff.linalg import Vector, dot, norm, sub
from ..autodiff.products import materialized
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

    Memory. Reverse mode through the K replayed steps keeps every step's activations until
    its backward pass, so the peak grows linearly in K. With ``checkpoint=True`` the
    replay runs twice: first without a graph, keeping only each step's parameters and
    optimizer state, then backwards, one step at a time, rebuilding that step's graph and
    pulling the adjoint of its parameters and state through it. The peak is then one
    step's graph plus K copies of the parameters and optimizer state, at the price of K
    more gradient evaluations. The result is the same (the arithmetic of every step is
    repeated exactly). By default (``checkpoint=None``) the replay is checkpointed from
    K = 4 steps on (``CHECKPOINT_FROM``): on the DARTS supernet of
    ``benchmarks/memory.py`` it holds 3.0x the plain step's peak at K = 4 and 3.1x at
    K = 8 instead of 6.9x and 12.5x, for 1.37x and 1.26x the time; below 4 steps the graph is
    small and the extra gradients are not worth it. A level whose Jacobian products must
    themselves be differentiable (``create_graph``: a nested upper level under
    ``jacobian="total"``) replays with one graph regardless.
    """

    CHECKPOINT_FROM: ClassVar[int] = 4

    checkpoint: bool | None = Field(
        None,
        description="replay the K steps backwards one at a time from stored states: "
        "memory of one step (plus K parameter copies) for K more gradient evaluations; "
        "None: from K = 4 on",
    )

    def checkpoints(self, unroll_steps: int) -> bool:
        """Whether a replay of ``unroll_steps`` steps runs checkpointed."""
        if self.checkpoint is None:
            return unroll_steps >= self.CHECKPOINT_FROM
        return self.checkpoint

    needs_trajectory = True
    supports_total: ClassVar[bool] = True

    def products(self, unroll_steps: int) -> int:
        """One gradient per replayed step and one backward pass through them; checkpointed,
        three passes a step (its gradient without a graph, again with one, and the step's
        backward pass)."""
        return 3 * unroll_steps if self.checkpoints(unroll_steps) else unroll_steps + 1

    def vjp(self, level: Level, v: Vector, parents: Sequence[Sequence[Tensor]]) -> SolverResult:
        trajectory = level.trajectory
        flat = [t for group in parents for t in group]
        if trajectory is None or len(trajectory) == 0:
            return SolverResult([[torch.zeros_like(t) for t in group] for group in parents])
        records = list(trajectory.records)
        if self.checkpoints(len(records)) and not level.create_graph:
            vjp, params = _checkpointed_vjp(level, v, flat, records)
        else:
            vjp, params = _one_graph_vjp(level, v, flat, records)
        if not level.diagnose:
            return SolverResult(split_by_parents(vjp, parents))
        with torch.no_grad():
            current = [p.detach() for p in level.params]
            error = norm(sub([p.detach() for p in params], current)) / norm(current).clamp_min(
                1e-30
            )
        return SolverResult(split_by_parents(vjp, parents), {"unroll_replay_error": error})


def _replay_step(
    level: Level,
    params: list[Tensor],
    state: list[dict[str, Tensor]],
    record: Any,
    differentiable: bool = True,
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """One of D's recorded updates, differentiable in ``params``, ``state`` and the parents
    (or, with ``differentiable=False``, only its values: its gradient builds no graph)."""
    if level.total_gradient is not None:
        grads = level.total_gradient(params, record.batch)
    else:
        loss = level.objective(params, batch=record.batch)
        grads = gradient(loss, params, create_graph=differentiable)
    if level.average is not None:
        # Under data parallelism D was trained by the global batch's gradient.
        grads = level.average(grads)
    if level.grad_clip is not None:
        grads = _clip(grads, level.grad_clip)
    return functional_optim.step(params, grads, state, record.rules)


def _one_graph_vjp(
    level: Level, v: Vector, flat: list[Tensor], records: list[Any]
) -> tuple[list[Tensor], list[Tensor]]:
    """Replay all K steps in one graph and pull ``v`` back through it in one pass."""
    params = [p.clone().requires_grad_(True) for p in records[0].params]
    state = [dict(s) for s in records[0].optimizer_state]
    for record in records:
        params, state = _replay_step(level, params, state, record)
    outputs = [p for p in params if p.requires_grad]
    vectors = [vi for p, vi in zip(params, v) if p.requires_grad]
    if not outputs:
        return [torch.zeros_like(t) for t in flat], params
    differentiable = level.create_graph
    vjp = products.vjp(
        outputs, flat, vectors, retain_graph=differentiable, create_graph=differentiable
    )
    return materialized(vjp, flat), params


def _checkpointed_vjp(
    level: Level, v: Vector, flat: list[Tensor], records: list[Any]
) -> tuple[list[Tensor], list[Tensor]]:
    """Replay forward keeping only each step's inputs, then backwards one step at a time."""
    params = [p.detach() for p in records[0].params]
    state = [dict(s) for s in records[0].optimizer_state]
    inputs = []
    for record in records:
        inputs.append((params, state))
        start = [p.clone().requires_grad_(True) for p in params]
        new_params, new_state = _replay_step(level, start, state, record, differentiable=False)
        params = [p.detach() for p in new_params]
        state = [{k: t.detach() for k, t in s.items()} for s in new_state]
    end = params
    total = [torch.zeros_like(t) for t in flat]
    adj_params: list[Tensor] = list(v)
    adj_state: list[dict[str, Tensor]] = [{} for _ in params]
    for step in reversed(range(len(records))):
        params_k, state_k = inputs[step]
        # The oldest step's inputs are the recorded start: their adjoint is not needed.
        start = [p.clone().requires_grad_(True) for p in params_k]
        leaves = [{k: _leaf(k, t) if step > 0 else t for k, t in s.items()} for s in state_k]
        new_params, new_state = _replay_step(level, start, leaves, records[step])
        outputs, vectors = [], []
        for p, a in zip(new_params, adj_params):
            if p.requires_grad:
                outputs.append(p)
                vectors.append(a)
        for s, adj in zip(new_state, adj_state):
            for key, a in adj.items():
                if s[key].requires_grad:
                    outputs.append(s[key])
                    vectors.append(a)
        state_leaves = [(i, k) for i, s in enumerate(leaves) for k in s if s[k].requires_grad]
        own = start if step > 0 else []
        wrt = own + [leaves[i][k] for i, k in state_leaves] + flat
        if outputs:
            grads = materialized(products.vjp(outputs, wrt, vectors), wrt)
        else:
            grads = [torch.zeros_like(t) for t in wrt]
        n = len(own)
        adj_params = list(grads[:n])
        adj_state = [{} for _ in leaves]
        for (i, k), g in zip(state_leaves, grads[n : n + len(state_leaves)]):
            adj_state[i][k] = g
        total = [a + g for a, g in zip(total, grads[n + len(state_leaves) :])]
    return total, end


def _leaf(key: str, value: Tensor) -> Tensor:
    """A stored optimizer-state tensor as a leaf the adjoint can reach (step counts are not
    functions of the parameters, so they stay constants)."""
    if key == "step" or not value.is_floating_point():
        return value
    return value.clone().requires_grad_(True)


def _clip(grads: Vector, max_norm: float) -> Vector:
    """Differentiable version of ``torch.nn.utils.clip_grad_norm_``."""
    total = dot(grads, grads).sqrt()
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * factor for g in grads]
