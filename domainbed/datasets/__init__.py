"""Datasets by name. `get_dataset_class(name)(root, test_envs, hparams)` gives an object with
`environments` (and `ENVIRONMENTS`), `input_shape`, `num_classes`, `N_STEPS`, `CHECKPOINT_FREQ`,
and one torch Dataset per environment. Every module of this package is imported, so a new
dataset is one new file with `@register_dataset("Name")`."""

import importlib
import pkgutil

from domainbed.datasets.base import MultipleDomainDataset
from domainbed.datasets.registry import DATASETS, get_dataset_class, register_dataset
from domainbed.datasets.splits import SplitDataset, split_dataset

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DATASETS", "MultipleDomainDataset", "SplitDataset", "get_dataset_class", "register_dataset", "split_dataset"]
