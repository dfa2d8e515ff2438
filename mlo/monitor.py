"""Progress bar, summary table, JSON-lines metrics and metric loggers for ``Engine.run``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .loggers import Logger

logger = logging.getLogger("mlo")


class MetricsWriter:
    """Appends one JSON object per line (the file is flushed after every record), and
    hands each record to a metric logger (``mlo.loggers``): the losses under ``loss/``,
    each level's solver diagnostics under ``<level>/``, against the tick."""

    def __init__(self, path: Path | None, metrics: Logger | None = None) -> None:
        self.path = path
        self.metrics = metrics
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self.metrics is not None:
            step = record["step"]
            self.metrics.log(record["loss"], tag="loss", step=step)
            for name, values in record["diagnostics"].items():
                self.metrics.log(values, tag=name, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


class RunMonitor:
    """A rich progress bar with each level's latest loss and the ticks per second."""

    def __init__(self, total: int, names: list[str], enabled: bool) -> None:
        self.enabled = enabled
        self.names = names
        self.start = time.perf_counter()
        self.done = 0
        self.latest: dict[str, float] = {}
        self._progress: Progress | None = None
        self._handler: logging.Handler | None = None
        if enabled:
            console = Console(stderr=True)
            self._progress = Progress(
                TextColumn("[bold]mlo"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[losses]}"),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task("run", total=total, rate="", losses="")
            self._progress.start()
            self._handler = RichHandler(console=console, show_path=False)
            logger.addHandler(self._handler)

    def update(self, ticks_done: int, losses: dict[str, float]) -> None:
        self.done = ticks_done
        self.latest.update(losses)
        if self._progress is None:
            return
        text = "  ".join(f"{n} {v:.4g}" for n, v in self.latest.items())
        self._progress.update(
            self._task, completed=ticks_done, rate=f"{self.rate():.2f} it/s", losses=text
        )

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def close(self, extra_rows: dict[str, str] | None = None) -> None:
        if self._progress is None:
            return
        self._progress.stop()
        table = Table(title="mlo run summary")
        table.add_column("level")
        table.add_column("final loss", justify="right")
        for name in self.names:
            value = self.latest.get(name)
            table.add_row(name, "—" if value is None else f"{value:.6g}")
        table.caption = f"{self.done} steps, {self.rate():.2f} steps/s, " + ", ".join(
            f"{k}: {v}" for k, v in (extra_rows or {}).items()
        )
        self._progress.console.print(table)
        if self._handler is not None:
            logger.removeHandler(self._handler)
            self._handler = None


def solver_warnings(
    problems: Mapping[str, Any],
    diagnostics: Mapping[str, Mapping[str, float]],
    tick: int,
    warned: set[str],
) -> None:
    """Log each solver's warnings about its diagnostics (a CG solve that did not
    converge, a Neumann series that grows, ...), each kind once per level per run
    (``warned`` remembers them)."""
    for name, values in diagnostics.items():
        for message in problems[name].config.solver.warnings(dict(values)):
            key = f"{name}:{message.split('(')[0]}"
            if key not in warned:
                warned.add(key)
                logger.warning("level %r, step %d: %s", name, tick, message)
