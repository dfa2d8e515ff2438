"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM asks the training loop to stop at its
next safe point (after the update under way), where it writes a checkpoint and ends with one
line that says how to resume. A second signal stops at once, as Python does by default.

Under ``torchrun`` every rank must stop at the same update (writing a checkpoint is
collective), so the ranks agree on the request after each update: one all-reduce of a
flag.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import torch

from mlo import MLOError
from mlo.parallel import distributed


class RunStopped(MLOError):
    """A run stopped on request at a safe point, its checkpoint written; the message says
    how to resume it. A command line ends with it in one line and exit status 130."""


class StopRequest:
    """Whether a stop was requested (:attr:`signal` names the first signal), agreed
    across ranks by :meth:`agreed`."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame: object) -> None:
        self.signal = signal.Signals(number).name
        for sig, handler in self._previous.items():  # a second signal stops at once
            signal.signal(sig, handler)

    def agreed(self) -> bool:
        """Whether to stop now: this process was asked to, or (under torchrun) any rank."""
        asked = self.signal is not None
        if not distributed.initialized():
            return asked
        flag = torch.tensor([1.0 if asked else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0 and self.signal is None:
            self.signal = "another rank's signal"
        return bool(flag.item() > 0)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the returned request instead of
    interrupting (in the main thread; elsewhere nothing changes)."""
    request = StopRequest()
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            request._previous[sig] = signal.signal(sig, request._handle)
    except ValueError:  # not the main thread: signals stay as they were
        request._previous.clear()
    try:
        yield request
    finally:
        for sig, handler in request._previous.items():
            signal.signal(sig, handler)
