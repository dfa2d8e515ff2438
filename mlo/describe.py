"""A readable account of an engine: levels, solvers, edges and the update order."""

from __future__ import annotations

from collections.abc import Mapping

from .graph import LevelGraph
from .hypergradient.jacobian import JacobianModes
from .problem import Problem
from .schedule import Action, Schedule


def describe(
    graph: LevelGraph,
    problems: Mapping[str, Problem],
    schedule: Schedule,
    tick: int,
    modes: JacobianModes,
    ticks: int = 1,
) -> str:
    """The level graph, each level's solver and Jacobian, and the update order of the
    next ``ticks`` ticks after tick ``tick``, simulated from ``schedule``'s current state
    (nothing is trained)."""
    lines = ["levels (top to bottom):"]
    for name in graph.order:
        cfg = problems[name].config
        lowers = f" lowers=[{', '.join(graph.children[name])}]" if graph.children[name] else ""
        if not graph.parents[name]:
            # No level above differentiates through a top level: its solver, unroll steps
            # and Jacobian are never used.
            lines.append(f"  {name}: top level (no solver: nothing above reads it){lowers}")
            continue
        solver = cfg.solver
        knobs = ", ".join(f"{k}={v}" for k, v in solver.model_dump().items())
        lines.append(
            f"  {name}: solver={solver.name}({knobs}) unroll_steps={cfg.unroll_steps}"
            + (f" warmup_steps={cfg.warmup_steps}" if cfg.warmup_steps else "")
            + lowers
            + modes.describe(name, True)
        )
    lines.append("edges (upper → lower):")
    edges = graph.edges()
    lines.extend(f"  {u} → {lo}" for u, lo in edges)
    if not edges:
        lines.append("  (none)")
    simulation = Schedule(
        graph,
        schedule.unroll_steps,
        schedule.warmup_steps,
        schedule.reset,
    )
    simulation.load_state_dict(schedule.state_dict())
    for t in range(ticks):
        lines.append(f"tick {tick + t + 1}: " + _compress(simulation.tick()))
    text = "\n".join(lines)
    return text


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
