"""Data orders that resume exactly, whatever the number of loader workers.

A checkpoint must put a run back at the same batch with the same augmentation. With a
plain shuffling ``DataLoader`` the order depends on the state of its generator, which
worker start-up also draws from (differently with persistent workers), and random
augmentations depend on which process draws them. Here both are functions of
``(seed, epoch, position)`` only:

- ``ResumableSampler`` yields the permutation ``randperm(n)`` of a generator seeded by
  ``(seed, epoch)``, from any position in it; its keys are ``(epoch, index)`` pairs;
- ``SeededDataset`` answers a key ``(epoch, index)`` with ``dataset[index]``
  computed under torch's random generator seeded by ``(seed, epoch, index)``, restored
  afterwards, so a random crop is the same in the main process and in any worker;
- ``resumable_loader`` puts the two in a ``DataLoader``. ``mlo.data.BatchStream``
  tells its sampler the epoch and position to start from, so a restored stream
  continues without replaying (or even loading) the batches already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_PRIME = 1_000_003


def _mix(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * _PRIME + int(part)) % (2**63 - 1)
    return value


class ResumableSampler(Sampler):
    """Keys ``(epoch, index)`` over ``range(n)``: shuffled by a generator seeded from
    ``(seed, epoch)`` (or in order), starting at ``start`` within the epoch.

    Each ``iter()`` yields one epoch and advances the epoch counter. ``set_epoch`` and
    ``set_start`` choose what the next ``iter()`` yields (``set_start`` applies once).

    On ``world`` data-parallel ranks, the epoch's order is cut into global batches of
    ``world · batch_size`` keys (an incomplete last one is dropped) and rank ``rank``
    yields its contiguous ``batch_size`` keys of each: the ranks' batches together are
    exactly one process's batch of ``world · batch_size``, so a run resumes on any number
    of ranks with the same global batch. ``start`` counts this rank's keys.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        *,
        rank: int = 0,
        world: int = 1,
        batch_size: int = 1,
    ) -> None:
        if world < 1 or not 0 <= rank < world or batch_size < 1:
            raise ValueError(
                f"ResumableSampler: rank {rank} of world {world}, batch_size {batch_size}: "
                "need 0 <= rank < world and batch_size >= 1"
            )
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        self.start = start

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        return torch.randperm(self.n, generator=generator)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's keys of an epoch's order (all of it on one process)."""
        if self.world == 1:
            return order
        per = self.world * self.batch_size
        full = len(order) // per
        grid = order[: full * per].view(full, self.world, self.batch_size)
        return grid[:, self.rank].reshape(-1)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        for index in self.shard(self.order(epoch))[start:].tolist():
            yield epoch, index

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        return self.n // (self.world * self.batch_size) * self.batch_size


class SeededDataset(Dataset):
    """``dataset[index]`` for a key ``(epoch, index)``, with torch's random generator
    seeded from ``(seed, epoch, index)`` during the call and restored afterwards."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, epoch, index))
            return self.dataset[index]


def resumable_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    workers: int = 0,
    drop_last: bool = True,
    rank: int | None = None,
    world: int | None = None,
    **loader_options: Any,
) -> DataLoader:
    """A ``DataLoader`` whose order and random augmentations are functions of ``(seed,
    epoch, position)``: the same for any number of workers, and restored exactly by a
    checkpoint at any position of any epoch.

    Under ``torch.distributed`` (``rank``/``world`` default to the default process
    group's) each rank loads its shard: ``batch_size`` is the per-rank batch, and the
    ranks' batches together are one process's batch of ``world · batch_size``."""
    from ..parallel import distributed

    rank = distributed.rank() if rank is None else rank
    world = distributed.world_size() if world is None else world
    sampler = ResumableSampler(
        len(dataset),  # type: ignore[arg-type]
        seed,
        shuffle,
        rank=rank,
        world=world,
        batch_size=batch_size,
    )
    return DataLoader(
        SeededDataset(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,  # type: ignore[arg-type]
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,
        # The loader draws its workers' base seed from this generator, not from torch's
        # global one, so starting an epoch leaves the training's random state alone.
        generator=torch.Generator().manual_seed(seed),
        **loader_options,
    )
