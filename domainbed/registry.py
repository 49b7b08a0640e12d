"""Registries of named things (algorithms, datasets, backbones): a decorator to add, a look-up
whose error lists the valid names."""

from domainbed.errors import unknown_name


class Registry:
    def __init__(self, what: str):
        self.what = what
        self.entries = {}

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
        if name not in self.entries:
            raise unknown_name(self.what, name, sorted(self.entries))
        return self.entries[name]
