"""An engine's durable state: what a checkpoint holds, and restoring it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import rng
from .checkpoint import CheckpointError

if TYPE_CHECKING:
    from .engine import Engine


def fingerprint(engine: Engine) -> dict[str, Any]:
    """What a checkpoint must match: the edges and every parameter's name and shape."""
    return {
        "edges": [list(e) for e in engine.graph.edges()],
        "params": {
            n: {k: list(v.shape) for k, v in p.module.state_dict().items()}
            for n, p in engine.problems.items()
        },
    }


def engine_state(engine: Engine) -> dict[str, Any]:
    """Parameters, buffers, optimizer and scheduler states, data positions, random
    number generator states, unroll trajectories, the schedule and the tick."""
    return {
        "format": "mlo.engine/1",
        "fingerprint": fingerprint(engine),
        "tick": engine.tick,
        "updates": dict(engine.updates),
        "skipped": dict(engine.skipped),
        "schedule": engine.schedule.state_dict(),
        "rng": rng.capture(),
        "trajectories": {n: t.state_dict() for n, t in engine.trajectories.items()},
        "problems": {
            n: {
                "module": p.module.state_dict(),
                "optimizer": None if p.optimizer is None else p.optimizer.state_dict(),
                "scheduler": None if p.scheduler is None else p.scheduler.state_dict(),
                "data": p.stream.state_dict(),
                "batch": p.batch if p.has_batch else None,
                "has_batch": p.has_batch,
            }
            for n, p in engine.problems.items()
        },
    }


def restore_engine_state(engine: Engine, state: dict[str, Any]) -> None:
    """Restore a :meth:`state_dict`; a mismatch raises before anything is changed."""
    if not isinstance(state, dict) or state.get("format") != "mlo.engine/1":
        raise CheckpointError("not an mlo engine checkpoint (format mlo.engine/1 expected)")
    mine, theirs = fingerprint(engine), state["fingerprint"]
    if mine != theirs:
        raise CheckpointError(
            "the checkpoint was written by a different graph: "
            + _fingerprint_difference(theirs, mine)
            + ". Load it into the same problems and dependencies it was saved from."
        )
    for name, p in engine.problems.items():
        saved = state["problems"][name]
        p.module.load_state_dict(saved["module"])
        if p.optimizer is not None:
            p.optimizer.load_state_dict(saved["optimizer"])
        if p.scheduler is not None and saved["scheduler"] is not None:
            p.scheduler.load_state_dict(saved["scheduler"])
        p.stream.load_state_dict(saved["data"])
        p.batch, p.has_batch = saved["batch"], saved["has_batch"]
    engine.schedule.load_state_dict(state["schedule"])
    for name, trajectory in engine.trajectories.items():
        trajectory.load_state_dict(state["trajectories"].get(name, []))
    rng.restore(state["rng"])
    engine.tick = state["tick"]
    engine.updates = dict(state["updates"])
    engine.skipped = dict(state.get("skipped", engine.skipped))


def _fingerprint_difference(saved: dict[str, Any], current: dict[str, Any]) -> str:
    if saved["edges"] != current["edges"]:
        return f"edges {saved['edges']} in the file, {current['edges']} here"
    for name in sorted(set(saved["params"]) | set(current["params"])):
        a, b = saved["params"].get(name), current["params"].get(name)
        if a is None or b is None:
            return f"problem {name!r} is {'missing from the file' if a is None else 'not here'}"
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"{name}.{key} has shape {a.get(key)} in the file, {b.get(key)} here"
    return "the fingerprints differ"
