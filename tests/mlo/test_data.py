"""A problem's data: what a loader can and cannot promise on resume."""

from __future__ import annotations

import torch


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
