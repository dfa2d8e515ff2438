from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from ..autodiff import functional_optim, gradient, products
from ..autodiff.forward import forward_product
from ..autodiff.linalg import Vector, add, dot, norm, sub
from ..autodiff.products import materialized
from ..durable import rng
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
    K = 8 instead of 6.9x and 12.6x, for 1.24x and 1.21x the time; below 4 steps the graph is
    small and the extra gradients are not worth it. A level whose Jacobian products must
    themselves be differentiable (``create_graph``: a nested upper level under
    ``jacobian="total"``) replays with one graph regardless. Every step evaluated again on
    the way back starts from the random state it first drew from, so a checkpointed
    replay sees the dropout masks of the one-graph replay.

    With ``ProblemConfig(hvp="forward")`` the checkpointed replay takes each step's
    second-order products (the Hessian's for the level's own adjoint, the mixed one for
    the parents') by one forward-over-reverse pass instead of a rebuilt graph's double
    backward. The values are the same; it does not hold less on the DARTS supernet (at
    K = 4, 2.9x the plain step's resident peak against 3.1x, but 3.2x its live tensors
    against 2.4x, at 1.1x the time), because that one pass differentiates the level's
    parameters and the architecture at once, so ``hvp="auto"`` leaves ``unroll`` in
    reverse mode. ``hvp="recompute"`` (a graph built for each product) is what the
    checkpointed replay does for each step already; here it leaves the choice to
    ``checkpoint``.
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
    # hvp="forward": the forward-over-reverse replay. It holds no less on the DARTS
    # supernet, so "auto" does not move an unroll level to it.
    takes_products: ClassVar[bool] = True

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
        if level.hvp == "forward" and _forward_replayable(level):
            vjp, params = _forward_vjp(level, v, flat, records)
        elif self.checkpoints(len(records)) and not level.create_graph:
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
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """One of D's recorded updates, differentiable in ``params``, ``state`` and the
    parents."""
    grads = _gradient(level, params, record, differentiable=True)
    return _optimizer_step(level, params, state, grads, record)


def _gradient(level: Level, params: list[Tensor], record: Any, differentiable: bool) -> Vector:
    """The gradient D was trained by at ``params`` on the step's batch (with
    ``differentiable=False``, its value only)."""
    if level.total_gradient is not None:
        grads = level.total_gradient(params, record.batch)
        return grads if differentiable else [g.detach() for g in grads]
    evaluate = level.twice_differentiable if differentiable else level.objective
    loss = evaluate(params, batch=record.batch)
    return gradient(loss, params, create_graph=differentiable)


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
    inputs, randoms, end = _sweep(level, records)
    after = rng.capture()
    total = [torch.zeros_like(t) for t in flat]
    adj_params: list[Tensor] = list(v)
    adj_state: list[dict[str, Tensor]] = [{} for _ in end]
    for step in reversed(range(len(records))):
        params_k, state_k, _ = inputs[step]
        rng.restore(randoms[step])  # the random numbers the sweep's step drew (dropout)
        first = step == 0  # the recorded start: its own adjoint is not needed
        start = [p.clone().requires_grad_(True) for p in params_k]
        leaves = _state_inputs(state_k, first)
        new = _replay_step(level, start, leaves, records[step])
        own = [] if first else start
        adj_params, adj_state, by_parents = _through_step(
            new, adj_params, adj_state, own, leaves, flat
        )
        total = add(total, by_parents)
    rng.restore(after)
    return total, end


def _sweep(
    level: Level, records: list[Any], keep_gradients: bool = False
) -> tuple[list[Any], list[Any], list[Tensor]]:
    """The replay without a graph: each step's parameters, optimizer state and (with
    ``keep_gradients``) gradient before averaging and clipping, the random state each
    step started from, and the end point."""
    params = [p.detach() for p in records[0].params]
    state = [dict(s) for s in records[0].optimizer_state]
    inputs, randoms = [], []
    for record in records:
        randoms.append(rng.capture())
        start = [p.clone().requires_grad_(True) for p in params]
        grads = _gradient(level, start, record, differentiable=False)
        inputs.append((params, state, grads if keep_gradients else None))
        new_params, new_state = _optimizer_step(level, params, state, grads, record)
        params = [p.detach() for p in new_params]
        state = [{k: t.detach() for k, t in s.items()} for s in new_state]
    return inputs, randoms, params


def _optimizer_step(
    level: Level, params: list[Tensor], state: list[dict[str, Tensor]], grads: Vector, record: Any
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """D's optimizer step from its gradient as the objective gives it (averaged over
    data-parallel ranks and clipped here, as D's steps were)."""
    if level.average is not None:
        grads = level.average(grads)
    if level.grad_clip is not None:
        grads = _clip(grads, level.grad_clip)
    return functional_optim.step(params, grads, state, record.rules)


def _forward_replayable(level: Level) -> bool:
    """Whether D's replay can take its second-order products by forward-over-reverse: its
    Jacobian products need not be differentiable, its gradient is a partial one, and it
    is on one process (the replay averages nothing)."""
    return not level.create_graph and level.total_gradient is None and level.average is None


def _forward_vjp(
    level: Level, v: Vector, flat: list[Tensor], records: list[Any]
) -> tuple[list[Tensor], list[Tensor]]:
    r"""The checkpointed replay with each step's second-order products by one
    forward-over-reverse pass (``ProblemConfig(hvp="forward")``).

    Step k maps \((\theta, s)\) to \(U(\theta, s, g)\) with \(g = \nabla_\theta f(\theta, y)\).
    Its adjoint: first through \(U\) alone, with \(g\) as an input (elementwise work, a
    small graph), which gives the adjoints of \(\theta\) and \(s\) through \(U\)'s direct
    dependence and \(u = (\partial U / \partial g)^\top a\); then \(u\) through the gradient,
    \(H u\) for \(\theta\) and \(\partial^2 f / \partial y \partial \theta \cdot u\) for the parents
    \(y\), both tangents of one forward-over-reverse pass. The sweep's gradients are
    stored, so that pass is the only evaluation of \(f\) a step takes on the way back."""
    inputs, randoms, end = _sweep(level, records, keep_gradients=True)
    after = rng.capture()
    total = [torch.zeros_like(t) for t in flat]
    adj_params: list[Tensor] = list(v)
    adj_state: list[dict[str, Tensor]] = [{} for _ in end]
    for step in reversed(range(len(records))):
        params_k, state_k, grads_k = inputs[step]
        first = step == 0  # the recorded start: its own adjoint is not needed
        start = [p.clone().requires_grad_(not first) for p in params_k]
        leaves = _state_inputs(state_k, first)
        grads = [g.clone().requires_grad_(True) for g in grads_k]
        new = _optimizer_step(level, start, leaves, grads, records[step])
        own = [] if first else start
        direct, adj_state, u = _through_step(new, adj_params, adj_state, own, leaves, grads)
        rng.restore(randoms[step])  # the random numbers the sweep's step drew (dropout)
        second = forward_product(
            lambda ps, batch=records[step].batch: level.objective(ps, batch=batch),
            params_k,
            u,
            flat,
            level.hold,
            level.name,
            by_params=not first,
        )
        if not first:
            adj_params = add(direct, second[: len(params_k)])
        total = add(total, second[len(second) - len(flat) :])
    rng.restore(after)
    return total, end


def _state_inputs(state: list[dict[str, Tensor]], first: bool) -> list[dict[str, Tensor]]:
    """A stored step's optimizer state as the inputs of its rebuilt graph: leaves the
    adjoint can reach, except at the oldest step, whose state's adjoint is not needed."""
    return [{k: t if first else _leaf(k, t) for k, t in s.items()} for s in state]


def _through_step(
    new: tuple[list[Tensor], list[dict[str, Tensor]]],
    adj_params: Vector,
    adj_state: list[dict[str, Tensor]],
    own: list[Tensor],
    leaves: list[dict[str, Tensor]],
    extra: list[Tensor],
) -> tuple[list[Tensor], list[dict[str, Tensor]], list[Tensor]]:
    """One backward pass through a rebuilt step: from the adjoints of its outputs ``new``
    (parameters and optimizer state), those of its inputs ``own`` (its parameters, or
    none), its state ``leaves`` and ``extra`` (the parents, or the step's gradient)."""
    new_params, new_state = new
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
    reached = [(i, k) for i, s in enumerate(leaves) for k in s if s[k].requires_grad]
    wrt = own + [leaves[i][k] for i, k in reached] + extra
    found = products.vjp(outputs, wrt, vectors) if outputs else [None] * len(wrt)
    grads = materialized(found, wrt)
    n, m = len(own), len(own) + len(reached)
    adj_inputs: list[dict[str, Tensor]] = [{} for _ in leaves]
    for (i, k), g in zip(reached, grads[n:m]):
        adj_inputs[i][k] = g
    return grads[:n], adj_inputs, grads[m:]


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
