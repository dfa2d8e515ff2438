"""A problem's trainable parameters, and evaluating its module at other values of them.

Solvers never write into ``.data``. To evaluate an objective at perturbed or replayed
parameters, ``ParameterSet.substitute`` swaps the tensors a module reads for the
duration of a ``with`` block and puts the originals back on exit, exception or not. The
parameters themselves, and anything holding a reference to them (optimizers), are never
modified.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class ParameterSet:
    """The trainable parameters of one module, in ``named_parameters()`` order."""

    def __init__(self, module: nn.Module) -> None:
        self.names: list[str] = []
        self.tensors: list[nn.Parameter] = []
        self._slots: list[tuple[nn.Module, str]] = []
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            owner_path, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            self.names.append(name)
            self.tensors.append(param)
            self._slots.append((owner, attr))

    def __len__(self) -> int:
        return len(self.tensors)

    def snapshot(self) -> list[Tensor]:
        """Detached copies of the current values."""
        return [p.detach().clone() for p in self.tensors]

    @contextmanager
    def substitute(self, values: Sequence[Tensor]) -> Iterator[None]:
        """Make the module compute with ``values`` in place of its parameters."""
        if len(values) != len(self._slots):
            raise ValueError(
                f"substitute() got {len(values)} tensors for {len(self._slots)} parameters"
            )
        originals = [owner._parameters[attr] for owner, attr in self._slots]
        try:
            for (owner, attr), value in zip(self._slots, values):
                owner._parameters[attr] = value  # type: ignore[assignment]
            yield
        finally:
            for (owner, attr), original in zip(self._slots, originals):
                owner._parameters[attr] = original


class BufferGuard:
    """Restores module buffers (e.g. BatchNorm running statistics) bit-for-bit.

    Hypergradient computations re-evaluate objectives; in training mode those forward
    passes would otherwise update running statistics as a side effect.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        seen: set[int] = set()
        self._buffers: list[Tensor] = []
        for module in modules:
            for buf in module.buffers():
                if id(buf) not in seen:
                    seen.add(id(buf))
                    self._buffers.append(buf)
        self.preserving = True
        """``False``: ``preserved()`` keeps nothing, so every train-mode forward pass updates
        running statistics (Betty's behaviour, ``mlo.betty``'s ``running_stats="update"``)."""

    def broadcast(self, reducer: Any) -> None:
        """Set every buffer to rank 0's (data-parallel training, ``mlo.parallel.distributed``)."""
        if self._buffers:
            reducer.broadcast_(self._buffers)

    @contextmanager
    def preserved(self) -> Iterator[None]:
        if not self._buffers or not self.preserving:
            yield
            return
        saved = [b.clone() for b in self._buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._buffers, saved)  # one batched copy, not one per buffer
