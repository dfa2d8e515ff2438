"""Evaluating a level's objective: on its current batch, with any level's parameters
substituted. The rest of ``mlo.hypergradient`` reaches the problems only through an
``Evaluator``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

from torch import Tensor, nn

from ..autodiff.linalg import Vector
from ..autodiff.trajectory import CURRENT_BATCH
from ..errors import (
    LevelError,
    MLOError,
    OutOfMemoryError,
    SetupError,
    describe_batch,
    first_line,
    is_out_of_memory,
)
from ..parallel.distributed import Reducer
from ..parameters import BufferGuard
from ..problem import Problem

_PLAIN = (Tensor, nn.Parameter)


class Evaluator:
    """Objectives, batches and cross-rank averages of the levels of one engine.

    Args:
        problems: the levels by name.
        buffers: guards every module's buffers while objectives are re-evaluated.
        reducer: the data-parallel reducer, or ``None`` on one process.
        replicated: per level, whether it is replicated on every rank (trained by its
            optimizer) rather than holding its own rank's solution.
        clock: the number of the tick under way, for error messages.
    """

    def __init__(
        self,
        problems: Mapping[str, Problem],
        buffers: BufferGuard,
        reducer: Reducer | None,
        replicated: Mapping[str, bool],
        clock: Callable[[], int],
    ) -> None:
        self.problems = problems
        self.buffers = buffers
        self.reducer = reducer
        self.replicated = replicated
        self.clock = clock
        self.values: dict[str, list[Tensor]] = {}
        """The levels whose parameters are replaced for the moment (``replaced``)."""

    # ------------------------------------------------------------------ batches

    def current_batch(self, name: str) -> Any:
        """The batch a level is evaluated on: its own latest batch, the next one if it has
        not drawn any (without consuming it), or its ``batch_from`` problem's."""
        problem = self.problems[name]
        source = problem.config.batch_from
        if source is not None:
            return self.current_batch(source)
        return problem.batch if problem.has_batch else problem.stream.peek()

    def draw_batch(self, name: str) -> Any:
        """Advance level ``name`` to its next batch (or its ``batch_from`` level's current
        one) and return it."""
        problem = self.problems[name]
        if problem.config.batch_from is not None:
            batch = self.current_batch(name)
        else:
            batch = problem.stream.next()
        problem.batch, problem.has_batch = batch, True
        return batch

    # ------------------------------------------------------------------ objectives

    def params(self, name: str) -> list[Tensor]:
        """The tensors level ``name`` computes with now: its parameters, or their
        replacements inside ``replaced``."""
        return list(self.values.get(name, self.problems[name].params.tensors))

    def objective(
        self, name: str, params: Sequence[Tensor] | None = None, batch: Any = CURRENT_BATCH
    ) -> Tensor:
        """``f_name`` on ``batch`` (default: the current one), with the level's parameters
        replaced by ``params`` when given; a scalar tensor, checked."""
        problem = self.problems[name]
        if batch is CURRENT_BATCH:
            batch = self.current_batch(name)
        context = problem.params.substitute(params) if params is not None else nullcontext()
        try:
            with context:
                loss = problem.training_step(batch)
        except MLOError:
            raise
        except (RuntimeError, IndexError, ValueError, MemoryError) as error:
            if is_out_of_memory(error):
                raise OutOfMemoryError(
                    f"problem {name!r} ran out of memory at step {self.clock() + 1} on a "
                    f"batch that is {describe_batch(batch)} ({first_line(error)}); use "
                    "smaller batches or a smaller model (fewer cells, channels or unroll "
                    "steps, smaller images)"
                ) from error
            if isinstance(error, MemoryError):
                raise
            # Shape and label mistakes in the data surface here, deep in a model's code:
            # name the level, the step and the batch (the original stays chained).
            raise LevelError(
                f"problem {name!r}: {type(problem).__name__}.training_step failed at step "
                f"{self.clock() + 1} on a batch that is {describe_batch(batch)} "
                f"({type(error).__name__}: {first_line(error)}); check that every batch of "
                "its data fits its model (shapes, label range)"
            ) from error
        if type(loss) is Tensor and loss.dim() == 0 and loss.dtype.is_floating_point:
            return loss  # the common case, checked in three cheap reads
        return _checked_loss(name, problem, loss)

    @contextmanager
    def replaced(self, values: dict[str, list[Tensor]]) -> Iterator[None]:
        """Levels compute with ``values`` in place of their parameters, and the adjoint
        propagation and solvers differentiate by those, until the block ends."""
        previous = self.values
        with ExitStack() as stack:
            for level, tensors in values.items():
                stack.enter_context(self.problems[level].params.substitute(tensors))
            self.values = {**previous, **values}
            try:
                yield
            finally:
                self.values = previous

    @contextmanager
    def held(self, keep: Sequence[Tensor]) -> Iterator[None]:
        """Every level's parameters except ``keep`` stop requiring gradients until the
        block ends, so that an evaluation differentiated by ``keep`` alone saves nothing
        autograd would need for the others. Only plain leaf tensors are held (a
        parameter replaced by a computed value, or a sharded ``DTensor``, stays as it is)."""
        kept = {id(t) for t in keep}
        held = [
            p
            for problem in self.problems.values()
            for p in problem.params.tensors
            if p.requires_grad and p.is_leaf and type(p) in _PLAIN and id(p) not in kept
        ]
        for p in held:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in held:
                p.requires_grad_(True)

    def response(self, name: str) -> list[Tensor]:
        """Level ``name``'s explicit best response on its current batch, checked."""
        problem = self.problems[name]
        values = list(problem.best_response(self.current_batch(name)))
        if len(values) != len(problem.params):
            raise SetupError(
                f"{type(problem).__name__}.best_response of problem {name!r} returned "
                f"{len(values)} tensors for {len(problem.params)} parameters"
            )
        for value, param, pname in zip(values, problem.params.tensors, problem.params.names):
            if value.shape != param.shape:
                raise SetupError(
                    f"{type(problem).__name__}.best_response of problem {name!r}: {pname} has "
                    f"shape {tuple(param.shape)}, the response {tuple(value.shape)}"
                )
        return values

    # ------------------------------------------------------------------ averages

    def average_of(self, name: str) -> Callable[[Vector], Vector] | None:
        """The cross-rank average for vectors of level ``name``, or ``None`` where
        nothing is averaged (one process, or a level each rank solves itself)."""
        if self.reducer is None or not self.replicated[name]:
            return None
        return self.reducer.mean

    def mean(self, name: str, vector: Vector) -> Vector:
        """``vector`` averaged over the data-parallel ranks if level ``name`` is
        replicated there; unchanged on one process."""
        if self.reducer is None or not self.replicated[name]:
            return vector
        return self.reducer.mean(vector)


def _checked_loss(name: str, problem: Problem, loss: Any) -> Tensor:
    if not isinstance(loss, Tensor):
        raise SetupError(
            f"{type(problem).__name__}.training_step of problem {name!r} returned "
            f"{type(loss).__name__}; it must return a scalar torch.Tensor"
        )
    if loss.numel() != 1:
        raise SetupError(
            f"{type(problem).__name__}.training_step of problem {name!r} returned a tensor "
            f"of shape {tuple(loss.shape)}; it must return a scalar (reduce it, e.g. .mean())"
        )
    if not loss.is_floating_point():
        raise SetupError(
            f"{type(problem).__name__}.training_step of problem {name!r} returned a "
            f"{loss.dtype} tensor; it must return a real floating-point loss"
            + (" (take .real or .abs() of a complex one)" if loss.is_complex() else "")
        )
    return loss.reshape(())
