"""Resumable data orders: a restored stream continues exactly, with any number of
workers, at any epoch and position, random augmentations included."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import Dataset

from mlo.data import BatchStream
from mlo.durable.sampling import resumable_loader


class Augmented(Dataset):
    """An index and a random number drawn when the item is loaded (an augmentation)."""

    def __len__(self) -> int:
        return 30

    def __getitem__(self, index: int):
        return index, torch.rand(())


def stream(workers: int, shuffle: bool = True) -> BatchStream:
    loader = resumable_loader(Augmented(), 4, seed=7, workers=workers, shuffle=shuffle)
    return BatchStream("p", loader)


def draw(s: BatchStream, n: int) -> list[tuple[list[int], list[float]]]:
    return [(b[0].tolist(), b[1].tolist()) for b in (s.next() for _ in range(n))]


REFERENCE = draw(stream(0), 30)  # 7 batches an epoch: a bit over four epochs


def cases(n: int):
    rng = random.Random(10)
    return [(rng.choice([0, 1, 2]), rng.randint(0, 3), rng.randint(0, 7)) for _ in range(n)]


@pytest.mark.parametrize(("workers", "epoch", "position"), cases(4))
def test_a_restored_stream_continues_exactly_with_any_workers(workers, epoch, position):
    consumed = 7 * epoch + position
    original = stream(workers)
    assert draw(original, consumed) == REFERENCE[:consumed]  # the order ignores workers
    state = original.state_dict()
    restored = stream(workers)
    restored.load_state_dict(state)
    assert draw(restored, 30 - consumed) == REFERENCE[consumed:]
    straight = stream(0)
    draw(straight, 30)
    assert restored.state_dict() == straight.state_dict()  # what the next checkpoint holds


def test_epochs_differ_and_unshuffled_is_in_order():
    for epoch in (0, 1):
        indices = [i for batch in REFERENCE[epoch * 7 : epoch * 7 + 7] for i in batch[0]]
        assert len(set(indices)) == 28 and set(indices) <= set(range(30))  # drop_last
    assert REFERENCE[:7] != REFERENCE[7:14]
    assert draw(stream(0, shuffle=False), 1)[0][0] == [0, 1, 2, 3]


def test_loading_an_item_leaves_the_global_random_state_alone():
    before = torch.get_rng_state()
    draw(stream(0), 3)
    assert torch.equal(before, torch.get_rng_state())
