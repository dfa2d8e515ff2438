"""A run's output folder, guarded: one writer at a time, no silent overwrite, resume only
with the settings the run was started with.

A run (a search or an evaluation) owns a folder ``OUT`` holding ``checkpoint.pt`` and
``metrics.jsonl``. ``claim`` checks the folder before anything is read or written:

- ``OUT`` must be a writable folder (or creatable);
- a folder that holds a previous run (a checkpoint) is refused unless the run resumes it
  (``--resume``) or replaces it (``--overwrite``); ``--resume`` needs a checkpoint. A
  folder without a checkpoint holds no run (one that failed or was killed before its
  first checkpoint): a new run starts there, its predecessor's outputs removed;
- a folder that holds files no run of the examples writes (another example's run, or
  unrelated files) is refused unless ``--overwrite`` says to write into it anyway;
- a lock (``OUT/.lock``, an exclusive POSIX record lock) refuses a second run into the
  same folder while the first is alive. The kernel releases it when the process dies, so
  a killed run never leaves a stale lock; unlike ``flock``, it is not inherited by
  forked data-loader workers, which may outlive a killed run by seconds.

``check_resumed_settings`` compares the settings stored in the checkpoint with the
current ones; ``truncate_metrics`` drops the metric records that a resumed run will
write again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mlo import MLOError

RUN_FILES = ("checkpoint.pt", "metrics.jsonl")
OUTPUTS = ("metrics.jsonl", "genotype.json", "cells.png", "alphas.png")
"""What a run writes besides its checkpoint."""
KNOWN = frozenset({*RUN_FILES, *OUTPUTS, "search_time.json"})
"""Every name a NAS run's folder may hold (``search_time.json``: the study's)."""
LOCK = ".lock"


class RunFolderError(MLOError, ValueError):
    """The output folder cannot be used as asked; the message says what to do."""


def check_writable(out: Path) -> None:
    """Raise unless ``out`` is a folder this process can write into, or can create."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; give a folder for the run's outputs")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"--out {out}: {existing} is a file, so the folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(
            f"--out {out}: {existing} is not writable by this user; choose another --out"
        )


@contextlib.contextmanager
def claim(out: Path, *, resume: bool, overwrite: bool) -> Iterator[None]:
    """Check ``out`` for the run (see the module's docstring) and hold its lock inside the
    ``with`` block. A run that fails before writing anything leaves no folder behind."""
    out = Path(out)
    with _held(out, resume=resume, overwrite=overwrite):
        checkpoint = out / "checkpoint.pt"
        if resume and not checkpoint.is_file():
            what = "is not a file" if checkpoint.exists() else "does not exist"
            raise RunFolderError(f"--resume: {checkpoint} {what}; start without --resume")
        foreign = sorted(
            entry.name
            for entry in out.iterdir()
            if entry.name not in KNOWN and entry.name != LOCK and not _partial_write(entry.name)
        )
        if foreign and not overwrite:
            shown = ", ".join(foreign[:3]) + (
                f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            )
            raise RunFolderError(
                f"{out} holds files that no run of this example writes ({shown}): it is "
                "another program's folder, or not a run's; give this run its own --out "
                "(--overwrite replaces a run's outputs and leaves the rest)"
            )
        previous = [name for name in RUN_FILES if (out / name).exists()]
        if checkpoint.exists() and not resume and not overwrite:
            raise RunFolderError(
                f"{out} holds a previous run ({', '.join(previous)}); pass --resume to "
                "continue it, --overwrite to replace it, or another --out"
            )
        if not checkpoint.exists() and not resume:
            # Nothing to resume: what a run that ended before its first checkpoint left.
            for name in OUTPUTS:
                (out / name).unlink(missing_ok=True)
        for stale in out.glob(".checkpoint.pt.*.tmp"):
            stale.unlink(missing_ok=True)  # a write cut short by a kill; we hold the lock
        yield


@contextlib.contextmanager
def _held(out: Path, *, resume: bool, overwrite: bool) -> Iterator[None]:
    """``out`` checked writable, ``resume`` and ``overwrite`` not both given, the folder
    made if need be and its lock held inside the block; on exit the lock is released and
    a folder this made is removed if it is still empty."""
    check_writable(out)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; pass one")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = _lock(out)
    except BaseException:
        if created:
            out.rmdir()
        raise
    try:
        yield
    finally:
        (out / LOCK).unlink(missing_ok=True)
        os.close(lock)
        if created and not any(out.iterdir()):
            out.rmdir()


RUN_RECORD = "run.json"
"""A small example's record of its run: which example, and with which settings."""


@contextlib.contextmanager
def claim_example(
    out: Path,
    example: str,
    *,
    resume: bool,
    overwrite: bool,
    settings: dict[str, Any],
    free: Iterable[str],
    override: set[str],
) -> Iterator[None]:
    """The small examples' folder rules, as the NAS examples': ``out`` holds one example's
    runs (``run.json`` records which, and the settings); a folder holding a previous run
    is refused unless resumed or replaced, one holding anything else unless
    ``overwrite``; ``resume`` needs a run of this example and the same settings but those
    ``override`` names; the folder is locked while the block runs."""
    out = Path(out)
    check_writable(out)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; pass one")
    if override and not resume:
        raise RunFolderError(
            f"--override {','.join(sorted(override))} without --resume: it names settings a "
            "resumed run may change; pass --resume too, or drop --override"
        )
    with _held(out, resume=resume, overwrite=overwrite):
        record = _read_record(out / RUN_RECORD)
        others = sorted(e.name for e in out.iterdir() if e.name not in (LOCK, RUN_RECORD))
        if record is None:
            if resume:
                raise RunFolderError(
                    f"--resume: {out} holds no run of {example} ({RUN_RECORD} does not exist); "
                    "start without --resume"
                )
            if others and not overwrite:
                raise RunFolderError(
                    f"{out} holds files that are not a run of {example} "
                    f"({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}); give this "
                    "run its own --out (--overwrite writes there anyway)"
                )
        elif record.get("example") != example and not overwrite:
            raise RunFolderError(
                f"{out} holds a run of {record.get('example')}, not of {example}; give this "
                "run its own --out"
            )
        elif not resume and not overwrite:
            raise RunFolderError(
                f"{out} holds a previous run of {example}; pass --resume to continue it, "
                "--overwrite to replace it, or another --out"
            )
        elif resume:
            check_resumed_settings(record.get("settings"), settings, free, override)
        if overwrite:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            for old in out.glob("metrics*.jsonl"):
                old.unlink()
        _write_record(out / RUN_RECORD, {"example": example, "settings": settings})
        yield


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunFolderError(
            f"{path} cannot be read ({exc}); it is not a run's record: give this run its own "
            "--out, or --overwrite"
        ) from None
    return record if isinstance(record, dict) else {}


def _write_record(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(partial, path)


def _partial_write(name: str) -> bool:
    """A checkpoint write cut short (``.checkpoint.pt.<random>.tmp``)."""
    return name.startswith(".checkpoint.pt.") and name.endswith(".tmp")


def _lock(out: Path) -> int:
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            owner = _read_owner(path)
            raise RunFolderError(
                f"another run{owner} is writing into {out}; wait for it to end, or give this "
                "run another --out"
            ) from None
        # The holder may have removed the file between our open and our lock: then lock
        # the file that is there now.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _read_owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def remove_previous_run(out: Path) -> None:
    """``--overwrite``: remove every output of the previous run (checkpoint, metrics,
    genotype, pictures), once the new run is validated, its data loaded and its engine
    built."""
    for name in {*RUN_FILES, *OUTPUTS}:
        (Path(out) / name).unlink(missing_ok=True)


def check_resumed_settings(
    saved: dict[str, Any] | None, current: dict[str, Any], free: Iterable[str], override: set[str]
) -> None:
    """Raise unless the checkpoint's settings ``saved`` equal ``current`` (both flat
    ``{dotted.key: value}``), except the keys in ``free`` (how the run is executed, not
    what it computes) and those the user overrides."""
    if saved is None:
        return
    free = set(free)
    differences = {
        key: (saved.get(key), current.get(key))
        for key in sorted(set(saved) | set(current))
        if key not in free and saved.get(key) != current.get(key)
    }
    unknown = sorted(override - set(differences))
    if unknown:
        raise RunFolderError(
            f"--override {','.join(unknown)}: not a setting that differs from the checkpoint's"
            + (f" (those that differ: {', '.join(differences)})" if differences else "")
        )
    refused = {k: v for k, v in differences.items() if k not in override}
    if refused:
        listed = "; ".join(
            f"{k} {old!r} in the checkpoint, {new!r} now" for k, (old, new) in refused.items()
        )
        raise RunFolderError(
            f"--resume: the run was started with other settings: {listed}. Resume with the "
            f"same settings, or pass --override {','.join(refused)} to continue with the new "
            "values"
        )


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of ``path`` up to ``step`` (the checkpoint's): a resumed run
    writes the later ones again. The file is replaced atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
