"""Looking at a model without changing it: the one way monitors evaluate modules.

Progress bars, metric records, reports and summaries evaluate modules between updates.
A forward pass in training mode moves BatchNorm running statistics, dropout and random
starts draw from the global random generators, and a recorded graph keeps memory alive.
Inside ``observing`` none of that can leak into the training state:

- gradients are off;
- every buffer of the given modules (running statistics, counters) is restored bit for
  bit on exit;
- the CPU and CUDA random generators are restored on exit;
- each submodule's ``training`` flag is restored on exit.

Which BatchNorm statistics an observation uses is the caller's choice and stays as the
module is: a module in training mode normalises with the statistics of the observed
batch (what the training objective sees), one in eval mode with its running statistics.
Either way the running statistics themselves do not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from .parameters import BufferGuard

_OBSERVING: ContextVar[bool] = ContextVar("mlo_observing", default=False)


def active() -> bool:
    """Whether an ``observing`` block is open (in this thread or task): layers that
    would otherwise communicate across data-parallel ranks (``mlo.SyncBatchNorm``)
    compute locally then, since an observation may run on one rank only."""
    return _OBSERVING.get()


def cuda_devices(modules: Iterable[nn.Module]) -> list[int]:
    """The CUDA device indices that the modules' parameters and buffers live on."""
    found = set()
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "cuda":
                found.add(tensor.device.index or 0)
    return sorted(found)


@contextmanager
def observing(modules: Iterable[nn.Module], guard: BufferGuard | None = None) -> Iterator[None]:
    """Evaluate ``modules`` inside the block; on exit their buffers, training flags and
    the random generators are as they were on entry (see the module docstring).

    ``guard`` is a ``BufferGuard`` already built over the modules
    (the engine keeps one); without it one is built here.
    """
    modules = list(modules)
    guard = guard if guard is not None else BufferGuard(modules)
    flags = [(m, m.training) for module in modules for m in module.modules()]
    with torch.random.fork_rng(devices=cuda_devices(modules)), guard.preserved():
        try:
            token = _OBSERVING.set(True)
            try:
                with torch.no_grad():
                    yield
            finally:
                _OBSERVING.reset(token)
        finally:
            for m, training in flags:
                m.training = training


def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """How many rows of ``logits`` have their largest entry at ``labels`` (a 0-dim
    tensor on the logits' device: no host synchronisation)."""
    return (logits.argmax(1) == labels).sum()
