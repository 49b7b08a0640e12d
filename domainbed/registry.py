"""Registries of named things (algorithms, datasets, backbones): a decorator to add, a look-up
whose error lists the valid names.

A look-up also finds what lives outside the repository (domainbed/plugins.py): names declared by
installed packages' entry points, and `package.module:Object` paths, which are registered under
that path on first use so that a saved run names them again the same way.
"""

from domainbed import plugins
from domainbed.errors import UsageError, unknown_name


class Registry:
    def __init__(self, what: str, check=None):
        """`check(obj)` raises a UsageError when a `package.module:Object` is no `what`."""
        self.what = what
        self.entries = {}
        self.check = check

    def register(self, name: str):
        """Decorator: file the class or builder under `name` (classes also get `NAME`)."""

        def decorator(obj):
            if name in self.entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self.entries[name] = obj
            if isinstance(obj, type):
                obj.NAME = name
            return obj

        return decorator

    def get(self, name: str):
        """The entry named `name`; a KeyError (also a UsageError) lists the valid names."""
        if name in self.entries:
            return self.entries[name]
        if plugins.is_object_path(name):
            return self._load(name)
        plugins.load_entry_points()
        if name not in self.entries:
            raise unknown_name(self.what, name, [*sorted(self.entries), "package.module:Object"])
        return self.entries[name]

    def _load(self, path: str):
        obj = plugins.load_object(path)
        if self.check is not None:
            self.check(obj, path)
        if obj not in self.entries.values():
            self.register(path)(obj)
        elif isinstance(obj, type) and getattr(obj, "NAME", None) != path:
            self.entries[path] = obj  # registered under its own name too: both find it
        return obj


def subclass_of(base, what: str):
    """A `check` for registries of classes: `obj` must subclass `base`."""

    def check(obj, path):
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise UsageError(f"{path} is not {what}; valid: a subclass of {base.__module__}.{base.__qualname__}")

    return check
