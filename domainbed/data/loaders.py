"""DataLoaders sized to the machine.

Training draws each domain's minibatches with replacement from an endless sampler, as DomainBed's
InfiniteDataLoader, with its own seeded generator so the stream depends only on the fold seed.
Workers persist across the run, memory is pinned when a GPU will consume the batches, and
in-memory datasets skip workers entirely.
"""

import os

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler


def num_workers_for(requested: int, dataset_max: int, n_loaders: int) -> int:
    """`requested` when it is >= 0; otherwise the cores left after the main process, shared
    among the loaders that run at once, capped by what the dataset wants."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(dataset_max, (cores - 1) // max(1, n_loaders)))


class _Forever:
    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler

    def __iter__(self):
        while True:
            yield from self.batch_sampler


class InfiniteDataLoader:
    """An endless iterator of `batch_size` minibatches drawn uniformly with replacement."""

    def __init__(self, dataset, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False):
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(dataset, replacement=True, generator=generator)
        batch_sampler = BatchSampler(sampler, batch_size=batch_size, drop_last=True)
        self._loader = DataLoader(
            dataset,
            batch_sampler=_Forever(batch_sampler),
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed + 1),
        )
        self._iterator = iter(self._loader)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iterator)


def eval_loader(dataset, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
