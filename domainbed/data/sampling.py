"""Which items a training minibatch holds: a pure function of (stream seed, step).

Each domain's stream draws `batch_size` indices uniformly with replacement (as DomainBed's
InfiniteDataLoader), but from a generator seeded by (seed, step) rather than by the history of
earlier draws, so a resumed run sees exactly the batches the uninterrupted run would have, and
every input pipeline (classic DataLoader or device-resident) can reproduce the same order.
"""

import torch

from domainbed.misc import seed_hash


def batch_indices(seed: int, step: int, dataset_size: int, batch_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed_hash(seed, step))
    return torch.randint(dataset_size, (batch_size,), generator=generator)


class StepBatchSampler:
    """Endless batch sampler: the batch of step t is `batch_indices(seed, t, ...)`, from `start_step`."""

    def __init__(self, seed: int, dataset_size: int, batch_size: int, start_step: int = 0):
        self.seed = seed
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.start_step = start_step

    def __iter__(self):
        step = self.start_step
        while True:
            yield batch_indices(self.seed, step, self.dataset_size, self.batch_size).tolist()
            step += 1
