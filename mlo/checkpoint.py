"""Atomic checkpoint files that load without running code.

A checkpoint is written to a temporary file in the destination folder, flushed to disk
with fsync, then renamed over the destination: a crash at any moment leaves either the
previous file or the new one, never half of one. Files are read with
``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit what it is loaded into."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_safe(path: str | Path, map_location: Any = "cpu") -> Any:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file (a folder or a pipe?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # torch's own message may advise weights_only=False, which would run any code the
        # file holds: never pass that on.
        detail = str(exc).splitlines()[0] if str(exc) else ""
        if "weights_only" in str(exc) or "unpickl" in str(exc).lower():
            detail = "it holds objects other than tensors and plain containers"
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {detail}); it is "
            "truncated, corrupt or not an mlo checkpoint. Use an earlier checkpoint."
        ) from None
