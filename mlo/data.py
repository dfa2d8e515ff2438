"""A problem's batches: any iterable, cycled, with a look-ahead that moves nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from .errors import DataError

_MISSING = object()
logger = logging.getLogger("mlo")


def _keeps_one_iterator(data: Any) -> bool:
    """Whether ``data`` is a DataLoader that reuses one iterator across epochs (persistent
    workers): its per-epoch order is then drawn from a generator state that a new process
    cannot reproduce, since the first iterator of a process also draws the workers' seed."""
    return (
        isinstance(data, torch.utils.data.DataLoader)
        and bool(getattr(data, "persistent_workers", False))
        and getattr(data, "num_workers", 0) > 0
        and not isinstance(getattr(data, "sampler", None), torch.utils.data.SequentialSampler)
    )


class BatchStream:
    """Cycles an iterable of batches; ``None`` data yields ``None`` forever.

    ``epoch`` counts completed passes and ``position`` the batches drawn in the current
    one. ``peek`` returns the next batch without consuming it, so that
    ``engine.hypergradient`` can evaluate a problem that has not drawn a batch yet without
    moving its data position.
    """

    def __init__(self, problem: str, data: Iterable[Any] | None) -> None:
        self.problem = problem
        self.data = data
        self.epoch = 0
        self.position = 0
        self._iterator: Iterator[Any] | None = None
        self._lookahead: Any = _MISSING
        self._epoch_rng: dict[str, Any] | None = None
        self._closed = False
        if data is not None and not isinstance(data, Iterable):
            raise DataError(
                f"data for problem {problem!r} must be an iterable of batches (a list, a "
                f"DataLoader, ...) or None; got {type(data).__name__}"
            )
        if self._resumable_sampler() is None and _keeps_one_iterator(data):
            logger.warning(
                "problem %r: its DataLoader keeps its workers across epochs "
                "(persistent_workers=True), so a resumed run cannot redraw the order of an "
                "epoch after the first: it will train on other batches from there. For an "
                "exact resume, load through mlo.durable.sampling.resumable_loader (or give "
                "the DataLoader a mlo.durable.sampling.ResumableSampler), or set "
                "persistent_workers=False",
                problem,
            )

    def _fetch(self) -> tuple[Any, bool]:
        """The next batch, and whether it starts a new pass over the data."""
        if self.data is None:
            return None, False
        if self._closed:
            raise DataError(
                f"data for problem {self.problem!r} was closed (Engine.close), and its "
                "loader's workers stopped; build a new Engine (and load a checkpoint to "
                "continue a run) instead of stepping a closed one"
            )
        if self._iterator is not None:
            try:
                return next(self._iterator), False
            except StopIteration:
                pass
        restart = self._iterator is not None
        self._iterator = self._new_iterator()
        try:
            return next(self._iterator), restart
        except StopIteration:
            hint = (
                " It is a one-shot iterator (e.g. a generator) that is now exhausted; pass a "
                "re-iterable such as a list or a DataLoader."
                if restart and iter(self.data) is self.data
                else " Check that the dataset is not empty."
            )
            raise DataError(f"data for problem {self.problem!r} yields no batches.{hint}") from None

    def _new_iterator(self) -> Iterator[Any]:
        # A shuffling loader draws its permutation when the iterator is made: keep the
        # random state of that moment, so that a resumed run can draw the same one.
        if self._resumable_sampler() is not None:
            self._epoch_rng = None  # the sampler's (seed, epoch, position) is the whole state
            return iter(self.data)
        generator = getattr(self.data, "generator", None)
        self._epoch_rng = {
            "torch": torch.get_rng_state(),
            "generator": generator.get_state() if isinstance(generator, torch.Generator) else None,
        }
        return iter(self.data)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "epoch_rng": self._epoch_rng}

    def _resumable_sampler(self) -> Any:
        """The loader's sampler when it can start at any epoch and position
        (``mlo.durable.sampling.ResumableSampler``, or any with ``set_epoch``/``set_start``)."""
        sampler = getattr(self.data, "sampler", None)
        batch_size = getattr(self.data, "batch_size", None)
        if batch_size and hasattr(sampler, "set_epoch") and hasattr(sampler, "set_start"):
            return sampler
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-open the saved epoch at the saved position: a resumable sampler is told
        where to start; any other iterable is re-opened with the random state of the
        epoch's start and the consumed batches are skipped."""
        self.prepare_load(state)()

    def prepare_load(self, state: dict[str, Any]) -> Callable[[], None]:
        """Do the part of ``load_state_dict`` that can fail (re-opening the epoch and
        skipping the consumed batches) without changing this stream, and return the
        function that applies it: a checkpoint is validated whole before anything moves.
        """
        epoch, position = int(state["epoch"]), int(state["position"])
        sampler = self._resumable_sampler()
        if sampler is not None:
            start = position * self.data.batch_size
            if epoch < 0 or not 0 <= start <= len(sampler):
                raise DataError(
                    f"data for problem {self.problem!r} has {len(sampler)} examples; the "
                    f"checkpoint had consumed {start} of epoch {epoch}. Resume with the same data"
                )

            def resume_sampler() -> None:
                sampler.set_epoch(epoch)
                sampler.set_start(start)
                self._set(epoch, position, iter(self.data), None)

            return resume_sampler
        saved = state.get("epoch_rng")
        if self.data is None or saved is None:
            return lambda: self._set(epoch, position, None, self._epoch_rng)
        # The epoch's iterator is re-made with the random state of its start, and the
        # consumed batches are skipped; every generator is then put back as it was, and
        # the loader's own generator is moved on only by the commit.
        current = torch.get_rng_state()
        generator = getattr(self.data, "generator", None)
        mine = generator.get_state() if isinstance(generator, torch.Generator) else None
        try:
            torch.set_rng_state(saved["torch"])
            if saved["generator"] is not None and mine is not None:
                generator.set_state(saved["generator"])
            iterator = iter(self.data)
            torch.set_rng_state(current)
            for _ in range(position):
                try:
                    next(iterator)
                except StopIteration:
                    raise DataError(
                        f"data for problem {self.problem!r} has fewer batches than the "
                        f"checkpoint had consumed ({position}); resume with the same data"
                    ) from None
            after = generator.get_state() if mine is not None else None
        finally:
            torch.set_rng_state(current)
            if mine is not None:
                generator.set_state(mine)

        def resume_iterator() -> None:
            if mine is not None:
                generator.set_state(after)
            self._set(epoch, position, iterator, saved)

        return resume_iterator

    def _set(self, epoch: int, position: int, iterator: Any, epoch_rng: Any) -> None:
        self.epoch, self.position = epoch, position
        self._lookahead = _MISSING
        self._iterator = iterator
        self._epoch_rng = epoch_rng

    def peek(self) -> Any:
        if self._lookahead is _MISSING:
            self._lookahead = self._fetch()
        return self._lookahead[0]

    def close(self) -> None:
        """Stop the worker processes of the data loader's iterator now.

        A ``DataLoader`` with workers stops them when its iterator is freed; but an
        iterator that a reference cycle holds (an engine and its problems refer to each
        other) is freed by the garbage collector, which closes the iterator's queues
        before the iterator asks its workers to stop, so it waits for each worker in
        vain until a 5-second timeout. Closing stops them at once. The stream yields
        nothing after it."""
        iterator, self._iterator = self._iterator, None
        self._lookahead, self._closed = _MISSING, True
        if iterator is None:
            return
        if getattr(self.data, "_iterator", None) is iterator:  # persistent workers
            self.data._iterator = None  # type: ignore[union-attr]
        stop = getattr(iterator, "_shutdown_workers", None)  # DataLoader's, with workers
        if callable(stop):
            stop()

    def next(self) -> Any:
        if self._lookahead is not _MISSING:
            (batch, restart), self._lookahead = self._lookahead, _MISSING
        else:
            batch, restart = self._fetch()
        if restart:
            self.epoch += 1
            self.position = 0
        self.position += 1
        return batch
