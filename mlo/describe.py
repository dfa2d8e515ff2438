"""A readable account of an engine: levels, solvers, edges and the update order."""

from __future__ import annotations

from collections.abc import Mapping

from .graph import LevelGraph
from .hypergradient.cost import CostEstimate, updates_of
from .hypergradient.hvp import HvpModes
from .hypergradient.jacobian import JacobianModes
from .problem import Problem
from .schedule import Action, Schedule


def describe(
    graph: LevelGraph,
    problems: Mapping[str, Problem],
    schedule: Schedule,
    tick: int,
    modes: JacobianModes,
    hvp_modes: HvpModes,
    ticks: int = 1,
    cost: CostEstimate | None = None,
) -> str:
    """The level graph, each level's solver and Jacobian, the autograd products a tick
    costs (with ``cost``), and the update order of the next ``ticks`` ticks after tick
    ``tick``, simulated from ``schedule``'s current state (nothing is trained)."""
    simulation = Schedule(graph, schedule.unroll_steps, schedule.warmup_steps, schedule.reset)
    simulation.load_state_dict(schedule.state_dict())
    ticked = [simulation.tick() for _ in range(max(ticks, 1))]
    updates = updates_of(ticked[0])
    lines = ["levels (top to bottom):"]
    for name in graph.order:
        cfg = problems[name].config
        lowers = f" lowers=[{', '.join(graph.children[name])}]" if graph.children[name] else ""
        if not graph.parents[name]:
            # No level above differentiates through a top level: its solver, unroll steps
            # and Jacobian are never used.
            lines.append(
                f"  {name}: top level (no solver: nothing above reads it){lowers}"
                + _products(name, updates, cost)
            )
            continue
        solver = cfg.solver
        knobs = ", ".join(f"{k}={v}" for k, v in solver.model_dump().items())
        lines.append(
            f"  {name}: solver={solver.name}({knobs}) unroll_steps={cfg.unroll_steps}"
            + (f" warmup_steps={cfg.warmup_steps}" if cfg.warmup_steps else "")
            + hvp_modes.describe(name)
            + lowers
            + modes.describe(name, True)
            + _products(name, updates, cost)
        )
    lines.append("edges (upper → lower):")
    edges = graph.edges()
    lines.extend(f"  {u} → {lo}" for u, lo in edges)
    if not edges:
        lines.append("  (none)")
    if cost is not None:
        exact, partial = cost.per_tick(updates, True), cost.per_tick(updates, False)
        line = f"autograd passes per tick: {exact:g}"
        if exact != partial:
            line += (
                f" (exact nested Jacobians); {partial:g} with jacobian='partial' on every "
                f"level; estimated time ratio at least {cost.ratio(updates):.1f}x"
            )
        lines.append(line)
    for t in range(ticks):
        lines.append(f"tick {tick + t + 1}: " + _compress(ticked[t]))
    text = "\n".join(lines)
    return text


def _products(name: str, updates: dict[str, int], cost: CostEstimate | None) -> str:
    """`` passes/tick=N`` for a level updated by the next tick (its gradients and
    its propagations through its lower levels), with the partial figure where it differs."""
    if cost is None or name not in updates:
        return ""
    exact = updates[name] * cost.per_update(name, True)
    partial = updates[name] * cost.per_update(name, False)
    return f" passes/tick={exact:g}" + (f" (partial: {partial:g})" if partial != exact else "")


def _compress(actions: list[Action]) -> str:
    parts: list[str] = []
    previous, count = None, 0
    for action in actions:
        label = action.problem if action.kind == "update" else f"reset({action.problem})"
        if label == previous:
            count += 1
            continue
        if previous is not None:
            parts.append(previous if count == 1 else f"{previous}×{count}")
        previous, count = label, 1
    if previous is not None:
        parts.append(previous if count == 1 else f"{previous}×{count}")
    return " → ".join(parts)
