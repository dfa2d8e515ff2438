"""A problem's data: what a loader can and cannot promise on resume."""

from __future__ import annotations

import pytest
import torch

import mlo


def test_a_loader_with_persistent_workers_says_at_construction_that_it_cannot_resume_exactly(
    caplog,
):
    """Such a loader draws the workers' seed only with its first iterator, from the same
    generator as the epoch's order: a resumed process cannot redraw an epoch after the
    first, and says so where the loader is given, naming the way to an exact resume."""
    import logging

    from torch.utils.data import DataLoader, TensorDataset

    from mlo.data import BatchStream
    from mlo.durable.sampling import resumable_loader

    data = TensorDataset(torch.arange(16.0))
    generator = torch.Generator().manual_seed(0)
    persistent = DataLoader(
        data,
        batch_size=4,
        shuffle=True,
        generator=generator,
        num_workers=2,
        persistent_workers=True,
    )
    with caplog.at_level(logging.WARNING, logger="mlo"):
        BatchStream("lower", persistent)
    assert "persistent_workers=True" in caplog.text
    assert (
        "mlo.durable.sampling.resumable_loader" in caplog.text and "ResumableSampler" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlo"):
        BatchStream("lower", DataLoader(data, batch_size=4, shuffle=True, num_workers=2))
        BatchStream("lower", resumable_loader(data, 4, seed=0, shuffle=True, workers=2))
        BatchStream("lower", DataLoader(data, batch_size=4, num_workers=2, persistent_workers=True))
    assert caplog.text == ""  # a new iterator per epoch, a resumable sampler, no shuffling


def _one_level_on_workers():
    """An engine of one level whose data is a resumable loader with 2 workers."""
    from torch.utils.data import TensorDataset

    from mlo.durable.sampling import resumable_loader

    from .helpers import Scalar

    class Fit(mlo.Problem):
        def training_step(self, batch):
            (x,) = batch
            return ((self.module.x - x.mean()) ** 2).sum()

    module = Scalar()
    data = resumable_loader(TensorDataset(torch.arange(32.0)), 4, seed=0, workers=2)
    level = Fit("fit", module, torch.optim.SGD(module.parameters(), lr=0.1), data)
    return mlo.Engine([level], config=mlo.EngineConfig(progress=False)), data


def test_closing_an_engine_stops_its_loaders_workers_at_once():
    """An engine and its problems refer to each other, so without ``close`` the workers
    live until the garbage collector frees the engine, which then waits 5 s for each
    (it closes the iterator's queues before the iterator asks the workers to stop)."""
    engine, data = _one_level_on_workers()
    engine.step()
    held = data._iterator  # as the frames of a failed step's traceback hold it
    workers = list(held._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    engine.close()
    assert not any(w.is_alive() for w in workers) and data._iterator is None
    with pytest.raises(mlo.DataError, match=r"was closed \(Engine.close\).*build a new Engine"):
        engine.step()
    engine.close()  # closing twice is harmless

    with _one_level_on_workers()[0] as engine:  # a with-block closes it too
        engine.step()
        (stream,) = (p.stream for p in engine.problems.values())
        held = stream.data._iterator
        workers = list(held._workers)
    assert workers and not any(w.is_alive() for w in workers)
