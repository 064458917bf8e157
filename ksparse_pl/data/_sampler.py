"""A shuffling sampler whose order depends only on (seed, epoch), so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import RandomSampler


class EpochRandomSampler(RandomSampler):
    """``RandomSampler`` reseeded from ``(seed, epoch)``; Lightning calls :meth:`set_epoch` every epoch.

    The order of epoch ``e`` is the same in an uninterrupted run and in a run resumed at epoch ``e``.
    Being a ``RandomSampler``, it is replaced by Lightning's ``DistributedSampler(shuffle=True)`` (also
    epoch-seeded) under DDP.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()
