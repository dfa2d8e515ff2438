"""The errors mlo raises for a user's mistake or a bad input.

Every one derives from ``MLOError``, so that a program (or a command line) can tell
a mistake to report in one line from a bug to show with its traceback::

    try:
        engine.run()
    except mlo.MLOError as error:
        sys.exit(f"error: {error}")

Each also derives from the built-in type that the same mistake raised before the
hierarchy existed (``ValueError``, ``TypeError``, ``RuntimeError``, ...), so existing
``except`` clauses keep working. Messages name the problem and the fix.
"""

from __future__ import annotations


class MLOError(Exception):
    """Base class of every error mlo raises for a mistake in its input."""


class SetupError(MLOError, ValueError, TypeError):
    """A problem, engine, solver or their options are set up wrongly (raised when they
    are built, before any training)."""


class GraphError(SetupError):
    """The dependency graph is not a valid multilevel program (unknown names, cycles)."""


class UnknownProblemError(SetupError, KeyError):
    """A problem was asked for by a name the engine does not have; the message lists the
    names it has."""

    def __str__(self) -> str:  # a KeyError would quote its message
        return str(self.args[0]) if self.args else ""


class DataError(MLOError, ValueError):
    """A problem's data cannot provide batches."""


class LevelError(MLOError, RuntimeError):
    """A level's ``training_step`` failed on one of its batches; the message names the
    level, the step and the batch."""


class OutOfMemoryError(MLOError, MemoryError):
    """A level's computation asked for more memory than the machine (or the GPU) has; the
    message names the level, the step and the allocation, and what to make smaller."""


class CheckpointError(MLOError, RuntimeError):
    """A checkpoint cannot be read, is corrupt, or does not fit what it is loaded into."""


class NonFiniteError(MLOError, FloatingPointError):
    """A loss, gradient, learning rate or parameter became NaN or infinite."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (``"no message"`` if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def describe_batch(batch: object) -> str:
    """A batch's structure in words, for error messages: tensors by shape and dtype."""
    from torch import Tensor

    if isinstance(batch, Tensor):
        return f"a tensor of shape {tuple(batch.shape)} ({batch.dtype})"
    if isinstance(batch, (list, tuple)):
        return "(" + ", ".join(describe_batch(b) for b in batch) + ")"
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k}: {describe_batch(v)}" for k, v in batch.items()) + "}"
    return type(batch).__name__


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator's refusal (CPU or CUDA), whatever type torch gave
    it."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return any(
        marker in text
        for marker in ("DefaultCPUAllocator", "can't allocate memory", "out of memory")
    )
