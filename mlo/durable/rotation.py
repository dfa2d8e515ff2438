"""Checkpoint rotation: ``step_<tick>.pt`` files in a run's folder, the oldest removed
beyond ``keep_last``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class CheckpointRotation:
    """The checkpoints one run wrote, in the order written.

    Only files this run wrote are rotated: another run's checkpoints in the same folder
    are never deleted, whatever their names. The list is part of each checkpoint, so a
    resumed run goes on rotating the files written before it was stopped.

    Args:
        folder: where ``step_<tick>.pt`` files go (``None``: no checkpoints).
        keep_last: how many to keep.
        writer: whether this process writes and removes files (rank 0).
    """

    def __init__(self, folder: Path | None, keep_last: int, writer: bool) -> None:
        self.folder, self.keep_last, self.writer = folder, keep_last, writer
        self.written: list[Path] = []

    def write(self, tick: int, save: Callable[[Path], Any]) -> Path:
        """``save(path)`` for tick ``tick``'s file (the list already names it, so that the
        saved state does), then remove this run's oldest beyond ``keep_last``."""
        path = Path(self.folder) / f"step_{tick:08d}.pt"
        before = self.written
        self.written = [p for p in self.written if p != path] + [path]
        try:
            save(path)
        except BaseException:
            self.written = before
            raise
        for old in self.written[: -self.keep_last] if self.writer else []:
            old.unlink(missing_ok=True)
        self.written = self.written[-self.keep_last :]
        return path

    def restore(self, saved: Sequence[str]) -> None:
        """Go on rotating the files a checkpoint lists, those in this run's folder only
        (a run resumed into another folder never deletes files outside it)."""
        folder = self.folder
        self.written = [
            Path(p) for p in saved if folder is not None and Path(p).parent == Path(folder)
        ]
