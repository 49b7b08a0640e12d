"""Which items a training minibatch holds: a pure function of (stream seed, step).

Each domain's stream draws `batch_size` indices uniformly with replacement (as DomainBed's
InfiniteDataLoader), but from a generator seeded by (seed, step) rather than by the history of
earlier draws, so a resumed run sees exactly the batches the uninterrupted run would have, and
every input pipeline (classic DataLoader or device-resident) can reproduce the same order.

Random augmentation is pinned the same way: each item of step t gets its own seed, a function of
(seed, t, position in the batch), and `SeededItems` runs the dataset's transform under that seed.
So the augmented batch of step t is the same whether the items are loaded in the main process or
in any worker, and after a resume, which restarts the workers.
"""

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from domainbed.hparams.declare import SMALL_IMAGES, common_hparams
from domainbed.hparams.rules import int_at_least
from domainbed.misc import seed_hash


@common_hparams
def _batch_hparams(hparam, dataset):
    meaning = "examples per training domain in each step"
    if dataset in SMALL_IMAGES:
        hparam("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)), valid=int_at_least(1), help=meaning)
    else:
        high = 5 if dataset == "DomainNet" else 5.5
        hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, high)), valid=int_at_least(1), help=meaning)


def batch_indices(seed: int, step: int, dataset_size: int, batch_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed_hash(seed, step))
    return torch.randint(dataset_size, (batch_size,), generator=generator)


def item_seeds(seed: int, step: int, batch_size: int) -> list:
    """The seed of each item of step `step`: what its random augmentation draws from."""
    generator = torch.Generator().manual_seed(seed_hash(seed, step, "items"))
    return torch.randint(2**62, (batch_size,), generator=generator).tolist()


class StepBatchSampler:
    """Endless batch sampler: the batch of step t is `batch_indices(seed, t, ...)`, from `start_step`.
    With `with_item_seeds` each index comes paired with its item seed, for `SeededItems`."""

    def __init__(self, seed: int, dataset_size: int, batch_size: int, start_step: int = 0,
                 with_item_seeds: bool = False):
        self.seed = seed
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.start_step = start_step
        self.with_item_seeds = with_item_seeds

    def __iter__(self):
        step = self.start_step
        while True:
            indices = batch_indices(self.seed, step, self.dataset_size, self.batch_size).tolist()
            if self.with_item_seeds:
                indices = list(zip(indices, item_seeds(self.seed, step, self.batch_size)))
            yield indices
            step += 1


class SeededItems(Dataset):
    """`dataset[index]` for an `(index, item seed)` key, with python's, numpy's and torch's global
    RNGs seeded from the item seed while the item is loaded (and restored afterwards in the main
    process, whose RNGs also drive training), so that random transforms are reproducible."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        in_main_process = get_worker_info() is None
        with _restored_global_rngs() if in_main_process else contextlib.nullcontext():
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


@contextlib.contextmanager
def _restored_global_rngs():
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
