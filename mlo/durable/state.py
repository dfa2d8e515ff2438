"""An engine's durable state: what a checkpoint holds, and restoring it.

Restoring validates everything first (graph, optimizers and their hyperparameters,
schedulers, data positions, schedule) and only then changes the engine: a checkpoint that
does not fit raises [`mlo.CheckpointError`][mlo.errors.CheckpointError] naming every
difference, and leaves the engine exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from ..errors import CheckpointError, MLOError
from . import rng

if TYPE_CHECKING:
    from ..autodiff.trajectory import Trajectory
    from ..config import EngineConfig
    from ..graph import LevelGraph
    from ..hypergradient.evaluator import Evaluator
    from ..parallel.distributed import Reducer
    from ..parallel.sharding import Sharding
    from ..problem import Problem
    from ..schedule import Schedule
    from .finite import FiniteGuard
    from .rotation import CheckpointRotation


class Engine(Protocol):
    """What of an engine its state is made of ([`mlo.Engine`][mlo.Engine] has all of it)."""

    config: EngineConfig
    problems: dict[str, Problem]
    graph: LevelGraph
    schedule: Schedule
    trajectories: dict[str, Trajectory]
    tick: int
    updates: dict[str, int]
    reducer: Reducer | None
    sharding: Sharding | None
    rotation: CheckpointRotation
    guard: FiniteGuard
    evaluator: Evaluator


FORMATS = ("mlo.engine/1", "mlo.engine/2")

# How an optimizer computes, not what it computes: free to differ between runs.
_IMPLEMENTATION = frozenset({"params", "foreach", "fused", "capturable", "differentiable"})


def fingerprint(engine: Engine, modules: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What a checkpoint must match: the edges and every parameter's name and shape (of
    ``modules``, the levels' module states, when the caller has them already)."""
    if modules is None:
        modules = {n: module_state(engine, n, full=False) for n in engine.problems}
    return {
        "edges": [list(e) for e in engine.graph.edges()],
        "params": {n: {k: list(v.shape) for k, v in m.items()} for n, m in modules.items()},
    }


def module_state(engine: Engine, name: str, full: bool = True) -> dict[str, Any]:
    """Level ``name``'s ``module.state_dict()``; for a fully sharded level, with ``full``
    every shard gathered into a full tensor (a collective: every rank calls it), and
    the level's parameters gathered again afterwards (FSDP2's state-dict hooks register
    the sharded ones)."""
    sharding = _sharding_of(engine, name)
    if sharding is None:
        return engine.problems[name].module.state_dict()
    return sharding.module_state(name, full)


def _sharding_of(engine: Engine, name: str) -> Sharding | None:
    """The engine's sharding if level ``name`` is fully sharded."""
    sharding = engine.sharding
    return sharding if sharding is not None and name in sharding else None


def optimizer_settings(optimizer: torch.optim.Optimizer | None, scheduler: Any) -> Any:
    """An optimizer's type and hyperparameters per group, and its scheduler's type.

    Under a scheduler the configured rate is ``initial_lr`` (``lr`` moves with the
    schedule), so ``lr`` itself is left out."""
    if optimizer is None:
        return None
    groups = []
    for group in optimizer.param_groups:
        hyper = {k: _plain(v) for k, v in group.items() if k not in _IMPLEMENTATION}
        if "initial_lr" in hyper:
            hyper.pop("lr", None)
        groups.append(hyper)
    return {
        "type": type(optimizer).__name__,
        "groups": groups,
        "scheduler": None if scheduler is None else type(scheduler).__name__,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def engine_state(engine: Engine) -> dict[str, Any]:
    """Parameters, buffers, optimizer and scheduler states, data positions, random
    number generator states, unroll trajectories, the schedule and the tick.

    Under data parallelism it also holds every rank's random states and current batches
    (gathered: every rank must call it); the states of fully sharded levels are
    gathered into full tensors (``mlo.parallel.sharding.Sharding.full_state``)."""

    def full(name: str, value: Any) -> Any:
        sharding = _sharding_of(engine, name)
        return value if sharding is None else sharding.full_state(value)

    modules = {n: module_state(engine, n) for n in engine.problems}  # (one gather each)
    state = {
        "format": "mlo.engine/2",
        "fingerprint": fingerprint(engine, modules),
        "optimizers": {
            n: optimizer_settings(p.optimizer, p.scheduler) for n, p in engine.problems.items()
        },
        "tick": engine.tick,
        "written_checkpoints": [str(p) for p in engine.rotation.written],
        "updates": dict(engine.updates),
        "skipped": dict(engine.guard.skipped),
        "schedule": engine.schedule.state_dict(),
        "rng": rng.capture(),
        "trajectories": {n: t.state_dict() for n, t in engine.trajectories.items()},
        "problems": {
            n: {
                "module": modules[n],
                "optimizer": None if p.optimizer is None else full(n, p.optimizer.state_dict()),
                "scheduler": None if p.scheduler is None else p.scheduler.state_dict(),
                "data": p.stream.state_dict(),
                "batch": p.batch if p.has_batch else None,
                "has_batch": p.has_batch,
            }
            for n, p in engine.problems.items()
        },
    }
    reducer = engine.reducer
    if reducer is not None:
        mine = {
            "rng": state["rng"],
            "batches": {n: state["problems"][n]["batch"] for n in engine.problems},
            "recorded": {n: [r["batch"] for r in t] for n, t in state["trajectories"].items()},
            # An explicit level holds its own rank's solution (say, explanations of this
            # rank's examples), not a replica: every rank's is saved.
            "explicit": {
                n: modules[n] for n in engine.problems if not engine.evaluator.replicated[n]
            },
        }
        gathered: list[Any] = reducer.gather(mine)
        state["ranks"] = {
            "world": reducer.world,
            "rng": [g["rng"] for g in gathered],
            "batches": {n: [g["batches"][n] for g in gathered] for n in engine.problems},
            # unroll's recorded batches: per level, per record, every rank's shard
            "recorded": {
                n: [[g["recorded"][n][i] for g in gathered] for i in range(len(t))]
                for n, t in state["trajectories"].items()
            },
            "explicit": {n: [g["explicit"][n] for g in gathered] for n in mine["explicit"]},
        }
    return state


def _this_rank(
    engine: Engine, state: dict[str, Any]
) -> tuple[Any, dict[str, Any], dict[str, list[Any]], dict[str, dict[str, Any]]]:
    """This rank's random state, current batches, ``unroll``'s recorded batches and
    explicit levels' module states from a checkpoint written on any number of ranks: its
    own when the number is the same; otherwise the saved global batches (and per-example
    explicit solutions) re-split evenly (the global batch is unchanged), and rank 0's
    random state."""
    rank = 0 if engine.reducer is None else engine.reducer.rank
    world = 1 if engine.reducer is None else engine.reducer.world
    saved = state.get("ranks")
    if saved is None:
        per_rank = {n: [state["problems"][n]["batch"]] for n in engine.problems}
        rngs, saved_world = [state["rng"]], 1
        recorded = {n: [[r["batch"]] for r in t] for n, t in state["trajectories"].items()}
    else:
        per_rank, rngs, saved_world = saved["batches"], saved["rng"], saved["world"]
        recorded = saved.get("recorded", {})
    explicit_parts = (saved or {}).get("explicit", {})  # none in older checkpoints

    def mine(parts: list[Any], what: str) -> Any:
        if saved_world == world:
            return parts[rank]
        try:
            return _split_batch(_join_batches(parts), world)[rank]
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"the checkpoint was written on {saved_world} rank(s) and this run has "
                f"{world}: {what} cannot be re-split ({error}). Resume on {saved_world} "
                "rank(s)"
            ) from None

    batches = {n: mine(parts, f"problem {n!r}'s current batch") for n, parts in per_rank.items()}
    replayed = {
        n: [mine(parts, f"a batch recorded for problem {n!r}'s unroll") for parts in records]
        for n, records in recorded.items()
    }
    explicit = {
        n: {key: mine([r[key] for r in parts], f"problem {n!r}'s {key}") for key in parts[0]}
        for n, parts in explicit_parts.items()
    }
    return rngs[rank] if saved_world == world else rngs[0], batches, replayed, explicit


def _join_batches(parts: list[Any]) -> Any:
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, (list, tuple)):
        return type(first)(_join_batches(list(group)) for group in zip(*parts))
    raise TypeError(f"a batch of {type(first).__name__} is not tensors")


def _split_batch(batch: Any, world: int) -> list[Any]:
    if batch is None:
        return [None] * world
    if isinstance(batch, Tensor):
        if len(batch) % world:
            raise ValueError(f"{len(batch)} examples do not split over {world} ranks")
        return list(batch.chunk(world))
    groups = [_split_batch(b, world) for b in batch]
    return [type(batch)(g[r] for g in groups) for r in range(world)]


def restore_engine_state(
    engine: Engine, state: dict[str, Any], keep_current_hyperparameters: bool = False
) -> None:
    """Restore a ``state_dict``: validate all of it, then apply it.

    Optimizer types and hyperparameters must match the checkpoint's, unless
    ``keep_current_hyperparameters``: then the optimizers' states are loaded and the
    hyperparameters given to this engine's optimizers are kept (a learning rate under a
    scheduler is rescaled, so that the schedule continues from the new base rate)."""
    commits = _validate(engine, state, keep_current_hyperparameters)
    own_rng, own_batches, own_recorded, own_explicit = _this_rank(engine, state)
    for name, p in engine.problems.items():
        saved = state["problems"][name]
        sharding = _sharding_of(engine, name)
        if sharding is not None:  # full tensors in the file, sliced for this rank's shards
            sharding.load_module(name, saved["module"])
        else:
            p.module.load_state_dict(own_explicit.get(name, saved["module"]))
        if p.optimizer is not None:
            current = [dict(g) for g in p.optimizer.param_groups]
            optimizer_state = saved["optimizer"]
            if sharding is not None:
                optimizer_state = sharding.optimizer_state(name, optimizer_state)
            p.optimizer.load_state_dict(optimizer_state)
            if p.scheduler is not None and saved["scheduler"] is not None:
                p.scheduler.load_state_dict(saved["scheduler"])
            if keep_current_hyperparameters:
                _keep_hyperparameters(p.optimizer, p.scheduler, current)
        commits[name]()
        p.batch, p.has_batch = own_batches[name], saved["has_batch"]
    engine.schedule.load_state_dict(state["schedule"])
    for name, trajectory in engine.trajectories.items():
        records = state["trajectories"].get(name, [])
        batches = own_recorded.get(name) or [r["batch"] for r in records]
        trajectory.load_state_dict(
            [r if r.get("current_batch") else {**r, "batch": b} for r, b in zip(records, batches)]
        )
    rng.restore(own_rng)
    engine.tick = state["tick"]
    engine.rotation.restore(state.get("written_checkpoints", []))
    engine.updates = dict(state["updates"])
    engine.guard.skipped = dict(state.get("skipped", engine.guard.skipped))


def _validate(
    engine: Engine, state: dict[str, Any], keep_current_hyperparameters: bool
) -> dict[str, Callable[[], None]]:
    """Raise unless ``state`` fits ``engine``; returns each stream's prepared restore."""
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        raise CheckpointError(f"not an mlo engine checkpoint (format {FORMATS[-1]} expected)")
    missing = [
        k
        for k in ("fingerprint", "tick", "updates", "schedule", "rng", "trajectories", "problems")
        if k not in state
    ]
    if missing:
        raise CheckpointError(f"the checkpoint's engine state lacks {', '.join(missing)}")
    mine, theirs = fingerprint(engine), state["fingerprint"]
    if mine != theirs:
        raise CheckpointError(
            "the checkpoint was written by a different graph: "
            + _fingerprint_difference(theirs, mine)
            + ". Load it into the same problems and dependencies it was saved from."
        )
    differences: list[str] = []
    saved_settings = state.get("optimizers") or {}
    for name, p in engine.problems.items():
        saved = state["problems"].get(name)
        if not isinstance(saved, dict):
            raise CheckpointError(f"the checkpoint holds no state for problem {name!r}")
        if (p.optimizer is None) != (saved.get("optimizer") is None):
            differences.append(
                f"problem {name!r}: an optimizer "
                + ("here, none in the file" if p.optimizer else "in the file, none here")
            )
            continue
        if (p.scheduler is None) != (saved.get("scheduler") is None):
            differences.append(
                f"problem {name!r}: a scheduler "
                + ("here, none in the file" if p.scheduler else "in the file, none here")
            )
        if p.optimizer is not None:
            groups = saved["optimizer"].get("param_groups", [])
            sizes = [len(g["params"]) for g in p.optimizer.param_groups]
            if [len(g.get("params", [])) for g in groups] != sizes:
                differences.append(
                    f"problem {name!r}: its optimizer's parameter groups differ in size"
                )
            if name in saved_settings:
                differences += _settings_difference(
                    name,
                    saved_settings[name],
                    optimizer_settings(p.optimizer, p.scheduler),
                    keep_current_hyperparameters,
                )
    if differences:
        fix = (
            ""
            if keep_current_hyperparameters
            else "; to train on with this engine's hyperparameters, load with "
            "keep_current_hyperparameters=True"
        )
        raise CheckpointError(
            "the checkpoint does not fit this engine: " + "; ".join(differences) + fix
        )
    commits = {}
    for name, p in engine.problems.items():
        try:
            commits[name] = p.stream.prepare_load(state["problems"][name]["data"])
        except MLOError:
            raise
        except Exception as error:
            raise CheckpointError(
                f"the checkpoint's data position for problem {name!r} cannot be restored "
                f"({type(error).__name__}: {error})"
            ) from error
    return commits


def _settings_difference(
    name: str, saved: Any, current: Any, keep_current_hyperparameters: bool
) -> list[str]:
    if saved is None or current is None:
        return []
    if saved["type"] != current["type"]:
        return [f"problem {name!r}: optimizer {current['type']} here, {saved['type']} in the file"]
    out = []
    if saved.get("scheduler") != current["scheduler"]:
        out.append(
            f"problem {name!r}: scheduler {current['scheduler']} here, "
            f"{saved.get('scheduler')} in the file"
        )
    if keep_current_hyperparameters:
        return out
    for i, (a, b) in enumerate(zip(saved["groups"], current["groups"])):
        for key in sorted(set(a) | set(b)):
            if not _same(a.get(key), b.get(key)):
                group = f" (group {i})" if len(current["groups"]) > 1 else ""
                out.append(
                    f"problem {name!r}: {key} {b.get(key)!r} here, {a.get(key)!r} in the "
                    f"file{group}"
                )
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _keep_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: Any, current: list[dict[str, Any]]
) -> None:
    for group, mine in zip(optimizer.param_groups, current):
        scheduled = "initial_lr" in mine and group.get("initial_lr", 0) != 0
        ratio = mine["initial_lr"] / group["initial_lr"] if scheduled else None
        for key, value in mine.items():
            if key in _IMPLEMENTATION or key == "lr":
                continue
            group[key] = value
        group["lr"] = group["lr"] * ratio if ratio is not None else mine["lr"]
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


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
