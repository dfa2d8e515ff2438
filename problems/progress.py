"""A rich progress display for the example training loops.

The first line is the bar: label, bar, steps done of the total, elapsed time, time
remaining, and the rate; it advances with every update. The time remaining is this
process's mean time per update times the updates left, so it shows from the second update
on however long an update takes. The second line holds the latest named fields (losses,
accuracies, epoch), which change only when the loop records them, so a narrow terminal
never squeezes the bar out. A third line, refreshed four times a second, says what the
update under way is doing (which level, through which lower levels' solvers).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class TrainingProgress:
    """``with TrainingProgress(total, "search") as bar: bar.advance(done, images)`` every
    update, and ``bar.record(**fields)`` when the fields change.

    A resumed run passes ``completed``, the updates done before, so that the rate and the
    time remaining count only this process's updates. Disabled, it prints nothing.
    """

    def __init__(
        self,
        total: int,
        label: str,
        enabled: bool = True,
        console: Console | None = None,
        unit: str = "img/s",
        completed: int = 0,
        activity: Callable[[], str] | None = None,
    ) -> None:
        self.enabled = enabled
        self.completed, self.total = completed, total
        self.activity = activity
        self.console = console or Console(stderr=True)
        self.start = time.perf_counter()
        self.images = 0
        self.unit = unit
        self._live: Live | None = None
        self._fields = Text("", overflow="fold")
        if enabled:
            self._progress = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta {task.fields[eta]}"),
                TextColumn("{task.fields[rate]}"),
                console=self.console,
            )
            self._task = self._progress.add_task(
                label, total=total, completed=completed, rate="", eta="-:--:--"
            )
            self._live = Live(
                console=self.console, refresh_per_second=4, get_renderable=self._render
            )

    def __enter__(self) -> TrainingProgress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    def _render(self) -> Group:
        lines = [self._progress, self._fields]
        now = self.activity() if self.activity is not None else ""
        if now:
            lines.append(Text(now, style="dim", overflow="ellipsis", no_wrap=True))
        return Group(*lines)

    def eta(self, done: int) -> str:
        """The time left as ``H:MM:SS``: this process's mean seconds per update times the
        updates left (``-:--:--`` before its first update)."""
        mine = done - self.completed
        if mine <= 0:
            return "-:--:--"
        left = (time.perf_counter() - self.start) / mine * max(0, self.total - done)
        hours, rest = divmod(round(left), 3600)
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"

    def images_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0

    def advance(self, done: int, images: int) -> None:
        """``done`` updates of the total so far; ``images`` seen by this process."""
        self.images = images
        if self._live is None:
            return
        self._progress.update(
            self._task,
            completed=done,
            rate=f"{self.images_per_second():.3g} {self.unit}",
            eta=self.eta(done),
        )

    def record(self, **fields: float | int | str) -> None:
        """Show these fields on the second line until the next record."""
        if self._live is None:
            return
        self._fields.plain = "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
        )
