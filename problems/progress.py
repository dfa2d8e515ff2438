"""A rich progress bar for the example training loops: named fields and throughput."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainingProgress:
    """``with TrainingProgress(total, "search") as bar: bar.update(done, images, **fields)``.

    Shows steps done of ``total``, elapsed time, images per second and the given fields
    (losses, accuracies, epoch). Disabled, it prints nothing.
    """

    def __init__(
        self, total: int, label: str, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.start = time.perf_counter()
        self.images = 0
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[info]}"),
                console=self.console,
            )
            self._task = self._progress.add_task(label, total=total, rate="", info="")

    def __enter__(self) -> TrainingProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def images_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0

    def update(self, done: int, images: int, **fields: float | int | str) -> None:
        self.images = images
        if self._progress is None:
            return
        info = "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
        )
        self._progress.update(
            self._task, completed=done, rate=f"{self.images_per_second():.0f} img/s", info=info
        )
