"""Checkpoint files: written atomically, sealed with a checksum, loaded without running code.

A checkpoint is written to a temporary file in the destination folder, flushed to disk
with fsync, then renamed over the destination: a crash at any moment leaves either the
previous file or the new one, never half of one. Files are read with
``torch.load(weights_only=True)``, which refuses pickled code.

Format ``mlo.checkpoint/2`` stores, next to the payload, the SHA-256 of its contents
(every key, every number, every tensor's dtype, shape and bytes, in order). Loading
recomputes it, so a flipped bit on disk or a file changed by hand is reported instead of
resumed from. Files of format 1 (no checksum) still load, unverified.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError

FORMAT = "mlo.checkpoint/2"

logger = logging.getLogger("mlo")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (temporary file, fsync,
    rename, fsync of the folder); the temporary file is removed on any failure."""
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
    except RuntimeError as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_failure(path, error) from error
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_failure(path: Path, error: RuntimeError) -> BaseException:
    """torch.save's writer reports a failed write (a full disk, most often) as a
    ``RuntimeError`` about stream positions that hides the cause; as an ``OSError`` with
    the file, the free space and torch's own line. Other errors are returned as they are."""
    text = str(error)
    if "unexpected pos" not in text and "PytorchStreamWriter" not in text:
        return error
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = free is not None and free < 64 << 20
    code = errno.ENOSPC if full else errno.EIO
    where = "" if free is None else f"; {free >> 20} MiB free there"
    first = text.strip().splitlines()[0] if text.strip() else "no message"
    return OSError(code, f"{os.strerror(code)} while writing it{where} (torch: {first})", str(path))


def load_safe(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, every failure a ``CheckpointError``
    that names the file (and never advises loading with ``weights_only=False``)."""
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


def read(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The payload of a checkpoint written by [`mlo.Engine.save`][mlo.Engine.save] (``engine`` and
    ``extra``), its format and checksum verified; nothing is applied to any engine."""
    return unseal(load_safe(path, map_location=map_location), path)


def digest(obj: Any) -> str:
    """SHA-256 of a checkpoint payload: its structure, keys, values and tensor bytes."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def seal(payload: dict[str, Any]) -> dict[str, Any]:
    """The file's contents: the format, the payload's checksum and the payload."""
    return {"format": FORMAT, "sha256": digest(payload), **payload}


def unseal(saved: Any, path: str | Path) -> dict[str, Any]:
    """The payload of a loaded checkpoint, after checking its format and checksum."""
    if not isinstance(saved, dict) or not isinstance(saved.get("engine"), dict):
        raise CheckpointError(
            f"{path} is not an mlo checkpoint (no engine state in it); pass a file "
            "written by Engine.save or run()"
        )
    payload = {k: v for k, v in saved.items() if k not in ("format", "sha256")}
    version = saved.get("format")
    if version is None:
        logger.warning("%s was written by mlo before checksums (format 1): not verified", path)
        return payload
    if version != FORMAT:
        raise CheckpointError(
            f"{path} has format {version!r}, which this mlo cannot read ({FORMAT} or 1); "
            "load it with the mlo version that wrote it"
        )
    if saved.get("sha256") != digest(payload):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its contents do not match the checksum stored "
            "when it was written (a changed bit on disk, or a file edited or copied "
            "incompletely). Use an earlier checkpoint."
        )
    return payload
