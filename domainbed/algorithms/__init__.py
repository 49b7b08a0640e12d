"""Every method, registered by name. Each module of this package is imported here, so adding a
method is adding one file: the class, registered with `@register_algorithm("Name")`, declares its
own hparams (`declare_hparams`, see domainbed/hparams/declare.py). Methods outside the repository
register the same way from an installed package's entry points, or are named
`--algorithm package.module:Class` (domainbed/plugins.py)."""

import importlib
import pkgutil

from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import ALGORITHMS, get_algorithm_class, register_algorithm

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm_class", "register_algorithm"]
