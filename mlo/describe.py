"""A readable account of an engine: levels, solvers, edges and the update order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .schedule import Action, Schedule

if TYPE_CHECKING:
    from .engine import Engine


def describe(engine: Engine, ticks: int = 1) -> str:
    """The level graph, each level's solver, and the update order of the next ``ticks``
    ticks, simulated from the engine's current schedule state (nothing is trained)."""
    lines = ["levels (top to bottom):"]
    for name in engine.graph.order:
        cfg = engine.problems[name].config
        solver = cfg.solver
        knobs = ", ".join(f"{k}={v}" for k, v in solver.model_dump().items())
        lines.append(
            f"  {name}: solver={solver.name}({knobs}) unroll_steps={cfg.unroll_steps}"
            + (f" warmup_steps={cfg.warmup_steps}" if cfg.warmup_steps else "")
            + (
                f" lowers=[{', '.join(engine.graph.children[name])}]"
                if engine.graph.children[name]
                else ""
            )
            + _jacobian(engine, name)
        )
    lines.append("edges (upper → lower):")
    edges = engine.graph.edges()
    lines.extend(f"  {u} → {lo}" for u, lo in edges)
    if not edges:
        lines.append("  (none)")
    simulation = Schedule(
        engine.graph,
        engine.schedule.unroll_steps,
        engine.schedule.warmup_steps,
        engine.schedule.reset,
    )
    simulation.load_state_dict(engine.schedule.state_dict())
    for t in range(ticks):
        lines.append(f"tick {engine.tick + t + 1}: " + _compress(simulation.tick()))
    text = "\n".join(lines)
    return text


def _jacobian(engine: Engine, name: str) -> str:
    """How the level's best-response Jacobian treats its own lower levels (only said of a
    level that has parents and lower levels, where the choice matters)."""
    if not engine.graph.parents[name] or not engine.graph.children[name]:
        return ""
    cfg = engine.problems[name].config
    if not cfg.uses_total():
        why = "as configured" if cfg.jacobian == "partial" else f"{cfg.solver.name} has no total"
        return f" jacobian=partial ({why})"
    if name in engine._partial_because:
        return f" jacobian=partial ({engine._partial_because[name]})"
    if engine._nested(name):
        return " jacobian=total (it reads its lower levels)"
    return " jacobian=partial (it reads none of its lower levels: the same)"


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
