"""Metric loggers: where a run's losses, solver diagnostics and validation statistics go.

``"none"`` keeps them in Python's ``logging`` (logger ``"mlo"``); ``"tensorboard"``
writes event files with ``torch.utils.tensorboard`` (``pip install "mlo[tensorboard]"``);
``"wandb"`` logs to Weights & Biases (``pip install "mlo[wandb]"``). Each value is logged
as ``<tag>/<key>`` against a step; a list or tuple of numbers as ``<tag>/<key>_<i>``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .errors import SetupError

KINDS = ("none", "tensorboard", "wandb")
Stats = Mapping[str, Any] | None


class Logger:
    """The plain logger: messages to Python's ``logging``, metrics nowhere."""

    def __init__(self, name: str = "mlo") -> None:
        self._log = logging.getLogger(name)

    def log(self, stats: Stats, tag: str | None = None, step: int | None = None) -> None:
        """Record ``stats`` (numbers, scalar tensors, or lists of them) at ``step``."""

    def info(self, message: str) -> None:
        """A progress message."""
        self._log.info(message)

    def warning(self, message: str) -> None:
        """A warning."""
        self._log.warning(message)

    def close(self) -> None:
        """Flush and release what the logger holds."""


def scalars(stats: Mapping[str, Any] | None, tag: str | None) -> dict[str, float]:
    """``stats`` as ``{"<tag>/<key>": float}``; entries that are not numbers are left out."""
    out: dict[str, float] = {}
    prefix = "" if tag is None else f"{tag}/"
    for key, value in (stats or {}).items():
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, item in items:
            if isinstance(item, torch.Tensor):
                if item.numel() != 1:
                    continue
                item = item.item()
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                out[prefix + key + ("" if i is None else f"_{i}")] = float(item)
    return out


class TensorBoardLogger(Logger):
    """Event files for TensorBoard in ``log_dir`` (default: a new folder under
    ``runs/``, named by time and host)."""

    def __init__(self, log_dir: str | Path | None = None, name: str = "mlo") -> None:
        super().__init__(name)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise SetupError(
                "the tensorboard logger needs the tensorboard package: "
                'pip install "mlo[tensorboard]"'
            ) from error
        if log_dir is None:
            stamp = datetime.now().strftime("%b%d_%H-%M-%S")
            log_dir = os.path.join("runs", f"{stamp}_{socket.gethostname()}")
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, stats: Stats, tag: str | None = None, step: int | None = None) -> None:
        for key, value in scalars(stats, tag).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """Weights & Biases: starts a run in ``project`` unless one is active."""

    def __init__(self, project: str = "mlo", name: str = "mlo") -> None:
        super().__init__(name)
        try:
            import wandb
        except ImportError as error:
            raise SetupError(
                'the wandb logger needs the wandb package: pip install "mlo[wandb]"'
            ) from error
        self.wandb = wandb
        self._started = wandb.run is None
        if self._started:
            wandb.init(project=project)

    def log(self, stats: Stats, tag: str | None = None, step: int | None = None) -> None:
        values = scalars(stats, tag)
        if values:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        """Finish the run this logger started (a run the program started stays open)."""
        if self._started and self.wandb.run is not None:
            self.wandb.finish()
            self._started = False


def make_logger(
    kind: str,
    *,
    project: str = "mlo",
    log_dir: str | Path | None = None,
    fallback: bool = False,
    name: str = "mlo",
) -> Logger:
    """The logger of ``kind`` (``"none"``, ``"tensorboard"``, ``"wandb"``). Its package
    missing raises [`mlo.SetupError`][mlo.errors.SetupError] with the install line, or with
    ``fallback=True`` (Betty's behaviour) warns and returns the plain logger."""
    if kind not in KINDS:
        raise SetupError(f"logger {kind!r} is not one of {', '.join(KINDS)}")
    try:
        if kind == "tensorboard":
            return TensorBoardLogger(log_dir, name=name)
        if kind == "wandb":
            return WandbLogger(project, name=name)
    except SetupError as error:
        if not fallback:
            raise
        logging.getLogger(name).warning("%s; logging to Python's logging instead", error)
    return Logger(name)
