"""DataLoaders sized to the machine.

Training draws each domain's minibatches with replacement from an endless sampler, as DomainBed's
InfiniteDataLoader; the items of step t, and their random augmentation, depend only on
(stream seed, t) (see sampling.py).
Workers persist across the run, memory is pinned when a GPU will consume the batches, and
in-memory datasets skip workers entirely. A loader whose iteration fails (an unreadable image)
stops its workers at once, so the process exits promptly after the error.
"""

import os

import torch
import torch.utils.data

from domainbed.data.sampling import SeededItems, StepBatchSampler
from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import int_at_least


class DataLoader(torch.utils.data.DataLoader):
    """torch's DataLoader, whose worker processes stop as soon as an iteration raises or is closed.
    Left to the garbage collector, they live as long as the error's traceback, which holds the
    iterator, and keep decoding prefetched batches meanwhile."""

    def __iter__(self):
        iterator = super().__iter__()
        try:
            yield from iterator
        except BaseException:  # an error, Ctrl-C, or close() (GeneratorExit)
            # DataLoader's own finalizer calls this private method; there is no public one
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._iterator = None  # persistent workers are gone: iterating again starts new ones
            raise


def num_workers_for(requested: int, dataset_max: int, n_loaders: int) -> int:
    """`requested` when it is >= 0; otherwise the cores left after the main process, shared
    among the loaders that run at once, capped by what the dataset wants. Every loader keeps at
    least one worker on a multi-core machine, so decoding overlaps with the training step."""
    if requested >= 0:
        return requested
    if dataset_max == 0:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    floor = 1 if cores > 1 else 0
    return max(floor, min(dataset_max, (cores - 1) // max(1, n_loaders)))


class InfiniteDataLoader:
    """An endless iterator of `batch_size` minibatches drawn uniformly with replacement."""

    def __init__(self, dataset, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False,
                 start_step: int = 0):
        # Only a transform draws random numbers while loading; seeding costs ~0.1 ms per item.
        seeded = getattr(dataset, "transform", None) is not None
        self._loader = DataLoader(
            SeededItems(dataset) if seeded else dataset,
            batch_sampler=StepBatchSampler(seed, len(dataset), batch_size, start_step, with_item_seeds=seeded),
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

    def close(self) -> None:
        """Stop the workers now."""
        self._iterator.close()


def eval_loader(dataset, batch_size: int, num_workers: int, seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """One pass in order. With workers, a DataLoader draws its workers' base seed from its
    `generator` at every new iterator, from the global RNG when it has none; ours has its own, so
    evaluating never moves the RNG that training and a resumed run draw from."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


@run_settings
def _loader_settings(hparam, dataset):
    hparam("num_workers", -1, valid=int_at_least(-1),
           help="DataLoader workers per loader; -1 sizes them to the machine's cores")
