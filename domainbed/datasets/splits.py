"""Per-environment holdout splits, as DomainBed and SWAD make them."""

import numpy as np
import torch.utils.data


class SplitDataset(torch.utils.data.Dataset):
    """The items `keys` of `underlying`, with this split's own transform on the raw input."""

    def __init__(self, underlying, keys, transform=None):
        self.underlying = underlying
        self.keys = list(keys)
        self.transform = transform

    def __getitem__(self, index):
        x, y = self.underlying[self.keys[index]]
        if self.transform is not None:
            x = self.transform(x)
        return x, y

    def __len__(self):
        return len(self.keys)


def split_dataset(dataset, n: int, seed: int = 0, keys=None):
    """(first n items, the rest) of a seeded shuffle of `dataset` (of its items `keys`, when
    given): DomainBed's split, so the same `trial_seed` selects the same holdout items as DomainBed
    and SWAD do."""
    keys = list(range(len(dataset))) if keys is None else list(keys)
    if not 0 <= n <= len(keys):
        raise ValueError(f"cannot hold out {n} of {len(keys)} items")
    np.random.RandomState(seed).shuffle(keys)
    return SplitDataset(dataset, keys[:n]), SplitDataset(dataset, keys[n:])
