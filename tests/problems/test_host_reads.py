"""GPU-ready ticks: a search tick reads nothing from the device between its finiteness
checks. On a GPU every ``.item()``, ``float(tensor)``, ``bool(tensor)`` or
data-dependent shape (``nonzero``, a boolean mask) waits for the device; on the CPU they
run as the same operators, so a dispatch mode here sees every one a GPU would wait on.

Each solver and product mode, on the DARTS search and on LeaSE's four levels (tiny
supernet; two iterations of each solver's loop, two lower updates per upper one, which
unroll replays): after the first tick (which makes one-off choices, such as
``fuse_mixed="auto"``'s operation count from the shapes, and reports its diagnostics),
one tick with the finiteness check not due reads nothing, except in ``torch.optim``'s
own step (Adam's step counter, a CPU tensor in non-capturable mode: no device wait)."""

from __future__ import annotations

import functools
import traceback
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mlo

from ..scripts import ROOT, load_script

_aten = torch.ops.aten
READS = {_aten._local_scalar_dense, _aten.is_nonzero, _aten.nonzero, _aten.masked_select}
"""The operators that hand a value or a data-dependent shape to the host; indexing by a
boolean mask (``x[mask]``, ``x[mask] = v``) too, below."""
MASKABLE = {_aten.index, _aten.index_put, _aten.index_put_}


def _masked(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


class HostReads(TorchDispatchMode):
    """Records each host read with the innermost frames of the code that asked for it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, list[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func._overloadpacket
        if packet in READS or (packet in MASKABLE and _masked(args)):
            frames = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]]
            self.reads.append((str(func), frames))
        return func(*args, **(kwargs or {}))


@functools.cache
def _benchmark():
    """``benchmarks/memory.py``, loaded once for all the cases."""
    return load_script(ROOT / "benchmarks" / "memory.py")


def search(network: str, solver: str, hvp: str) -> mlo.Engine:
    """The memory benchmark's search (``benchmarks/memory.py``: its supernet, batches and
    LeaSE levels), at 1 cell of 4 channels, batch 4, 8x8 images."""
    bench = _benchmark()
    args = SimpleNamespace(layers=1, channels=4, batch=4, size=8, device="cpu", network=network)
    chosen = mlo.solvers.resolve(solver)
    if "iterations" in type(chosen).model_fields:  # two: a read inside the loop shows
        chosen = chosen.model_copy(update={"iterations": 2})
    net, arch, train, val, gen = bench._supernet(args)
    problems, deps = bench.search_levels(net, arch, train, val, args, gen, chosen, unroll=2)
    for problem in problems:
        if problem.name in ("network", "explainer", "audience"):  # where the solver is
            problem.config = problem.config.model_copy(update={"hvp": hvp})
    config = mlo.EngineConfig(progress=False, log_every=100, check_finite_every=100)
    return mlo.Engine(problems, deps, config)


MODES = [
    ("cg", "auto"),
    ("neumann", "auto"),
    ("darts", "auto"),
    ("sama", "auto"),
    ("unroll", "auto"),
    ("cg", "forward"),
    ("cg", "recompute"),
    ("neumann", "finite_difference"),
]
CASES = [("darts", *mode) for mode in MODES] + [("lease", "cg", "auto")]
"""Every solver and product mode on the DARTS search; LeaSE (its PGD explanations, the
explicit explain level, the audience) with its default solver."""


@pytest.mark.parametrize(("network", "solver", "hvp"), CASES, ids=["-".join(c) for c in CASES])
def test_a_tick_reads_nothing_from_the_device_between_checks(network, solver, hvp):
    engine = search(network, solver, hvp)
    engine.step()  # the first tick's one-off choices, and its diagnostics
    with HostReads() as seen:
        engine.step()
    outside_optim = [
        (op, frames[-6:])
        for op, frames in seen.reads
        if not any("/torch/optim/" in frame for frame in frames)
    ]
    assert outside_optim == [], outside_optim


def test_the_mode_sees_each_kind_of_host_read():
    x = torch.tensor([1.0, -2.0, 3.0])
    with HostReads() as seen:
        x.sum().item()
        float(x.max())
        bool(x[0] > 0)
        x.nonzero()
        x[x > 0].sum()
        x[x < 0] = 0.0
        x[torch.tensor([0, 2])].sum()  # an integer index: no read
    assert len(seen.reads) == 6, [op for op, _ in seen.reads]
