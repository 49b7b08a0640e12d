"""Every method, registered by name. Each module of this package is imported here, so adding a
method is adding one file (plus its defaults in `domainbed/hparams_registry.py`)."""

import importlib
import pkgutil

from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import ALGORITHMS, get_algorithm_class, register_algorithm

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm_class", "register_algorithm"]
