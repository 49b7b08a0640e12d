"""Methods, datasets, backbones and extensions from outside the repository, without a fork.

Two ways in, both ending in the same registries as the built-in ones:

- an installed package names its modules in entry points, one group per kind:

      [project.entry-points."domainbed.algorithms"]
      my_method = "my_package.my_method"

  (groups `domainbed.algorithms`, `domainbed.datasets`, `domainbed.backbones`,
  `domainbed.extensions`); the harness imports them the first time it looks a name up, and their
  decorators (`register_algorithm`, `register_dataset`, `register_backbone`,
  `register_extension`, `common_hparams`, `run_settings`) do the rest;
- a name written `package.module:Object` (`--algorithm my_package.my_method:MyMethod`) imports
  `package.module` from the python path and takes `Object`, registered or not.
"""

import importlib
import importlib.metadata

from domainbed.errors import UsageError, first_line

GROUPS = ("domainbed.algorithms", "domainbed.datasets", "domainbed.backbones", "domainbed.extensions")
_loaded = False


def load_entry_points() -> None:
    """Import every module that an installed package declares in one of `GROUPS`, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for group in GROUPS:
        for entry_point in importlib.metadata.entry_points(group=group):
            try:
                entry_point.load()
            except Exception as error:
                raise UsageError(f"entry point {entry_point.name} = {entry_point.value} (group {group}) "
                                 f"cannot be imported: {first_line(error, with_type=True)}") from None


def is_object_path(name) -> bool:
    return isinstance(name, str) and ":" in name


def load_object(path: str):
    """The object that `package.module:Object` names; a one-line UsageError otherwise."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"{path!r} names no object; valid: package.module:Object")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise UsageError(f"cannot import {module_name} for {path!r}: {first_line(error, with_type=True)}; valid: a module "
                         "on the python path (PYTHONPATH) or in an installed package") from None
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name} has no {attribute!r} (for {path!r}); valid: "
                             + ", ".join(name for name in dir(module) if not name.startswith("_")))
        obj = getattr(obj, part)
    return obj
