"""The training loop the search and the evaluation share: engine ticks with a progress bar
that moves every update, metric records every ``log_every`` updates, and checkpoints every
``checkpoint_every`` updates and at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

import mlo
from mlo.monitor import MetricsWriter

from ..launch import lead
from ..progress import TrainingProgress
from ..stopping import RunStopped, stop_on_signals
from ..threads import adapt_threads


def train(
    engine: mlo.Engine,
    total: int,
    *,
    title: str,
    out: Path,
    images_per_tick: int,
    log_every: int | None,
    checkpoint_every: int,
    checkpoint_minutes: float = 10.0,
    progress: bool,
    console: Console,
    record: Callable[[], dict[str, Any]],
    checkpoint_extra: Callable[[], dict[str, Any]] = dict,
) -> float:
    """Tick ``engine`` until ``total``; returns the seconds this process trained.

    Records are written every ``log_every`` updates; by default (``None``) every 10, or
    more often in a short run so that any run gives about 20 records (α curves, metrics)
    or one per update.

    A checkpoint is written every ``checkpoint_every`` updates, after
    ``checkpoint_minutes`` of training since the last one, at the end, and when Ctrl-C or
    SIGTERM asks the run to stop: then at the end of the update under way, and the loop
    raises :class:`problems.stopping.RunStopped` saying how to resume.

    ``record()`` is called at every metric record (after ``engine.report()``, inside no
    observer of its own: it must observe through ``engine.observing()``); its values join
    the record and the progress display. ``checkpoint_extra()`` is saved with each
    checkpoint (``OUT/checkpoint.pt``).
    """
    if log_every is None:
        log_every = min(10, max(1, total // 20))
    writer = MetricsWriter(out / "metrics.jsonl" if lead() else None)
    start, start_tick = time.perf_counter(), engine.tick
    checkpoint = out / "checkpoint.pt"
    try:
        shown = progress and lead()
        ranks = mlo.parallel.distributed.world_size()
        unit = "img/s" if ranks == 1 else "img/s per rank"
        with (
            stop_on_signals() as stopping,
            TrainingProgress(
                total,
                title,
                shown,
                console,
                unit=unit,
                completed=engine.tick,
                activity=lambda: activity_of(engine, total),
            ) as bar,
        ):
            saved_at = time.monotonic()
            while engine.tick < total:
                adapt_threads()  # fewer threads while other processes use the cores
                engine.step()
                done = engine.tick
                bar.advance(done, (done - start_tick) * images_per_tick)
                if done % log_every == 0 or done == total:
                    report = engine.report()
                    fields = record()
                    bar.record(**{f"{n} loss": v for n, v in report["loss"].items()}, **fields)
                    writer.write({**report, **fields, "images_per_second": bar.images_per_second()})
                late = time.monotonic() - saved_at > 60 * checkpoint_minutes
                stop = stopping.agreed()
                if done % checkpoint_every == 0 or done == total or late or stop:
                    engine.save(checkpoint, extra=checkpoint_extra())
                    saved_at = time.monotonic()
                if stop and done < total:
                    raise RunStopped(
                        f"stopped by {stopping.signal} after update {done} of {total}; "
                        f"{checkpoint} holds it: run the same command with --resume to "
                        "continue"
                    )
    finally:
        writer.close()
    return time.perf_counter() - start


def activity_of(engine: mlo.Engine, total: int) -> str:
    """What the update under way does, in words: the tick, the level, and the lower levels
    (with their solvers) its hypergradient goes through; empty between updates."""
    name = engine.updating
    if name is None:
        return ""
    below = engine.graph.descendants(name)
    through = ", ".join(f"{n} ({engine.problems[n].config.solver.name})" for n in below)
    return f"step {engine.tick + 1}/{total}: updating {name}" + (
        f", its hypergradient through {through}" if through else ""
    )
