"""Counting the bytes of the tensors autograd saves for backward passes, for the memory
tests (``test_nested_memory``, ``test_unroll``)."""

from __future__ import annotations

import weakref

import torch


class _Box:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class SavedBytes:
    """Within its block, the bytes of the tensors autograd saves for backward that are
    still held (``live``), and their most at any moment (``peak``)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def _pack(self, tensor: torch.Tensor) -> _Box:
        box, size = _Box(tensor), tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._free, size)  # when the graph lets the tensor go
        return box

    def _free(self, size: int) -> None:
        self.live -= size

    def __enter__(self) -> SavedBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda b: b.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
