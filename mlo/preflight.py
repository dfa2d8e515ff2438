"""Before any training: every level's objective evaluated once on its first batch,
changing nothing, so that data that does not fit a model fails with a message that
names the level and the batch, not deep in a tick."""

from __future__ import annotations

import torch

from .errors import LevelError, MLOError, SetupError, describe_batch, first_line
from .hypergradient.evaluator import Evaluator
from .observe import cuda_devices


def preflight(evaluator: Evaluator) -> None:
    """Evaluate every level's objective on its current (or first) batch; buffers and
    random generators are restored, no batch is consumed."""
    problems = evaluator.problems
    devices = cuda_devices([p.module for p in problems.values()])
    for name in problems:
        try:
            with torch.random.fork_rng(devices=devices), evaluator.buffers.preserved():
                evaluator.objective(name)
        except LevelError as error:
            cause = error.__cause__ or error
            raise LevelError(_message(evaluator, name, cause)) from cause
        except MLOError:
            raise
        except TypeError as error:
            raise SetupError(_message(evaluator, name, error)) from error


def _message(evaluator: Evaluator, name: str, error: BaseException) -> str:
    problem = evaluator.problems[name]
    batch = evaluator.current_batch(name)
    return (
        f"problem {name!r} fails on its first batch, before any training "
        f"({type(error).__name__}: {first_line(error)}). The batch is "
        f"{describe_batch(batch)}; check that the data fits "
        f"{type(problem.module).__name__} and {type(problem).__name__}.training_step"
    )
