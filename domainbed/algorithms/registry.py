"""The algorithm registry: `@register_algorithm("Name")` on the class is all a method needs."""

from domainbed.errors import unknown_name

ALGORITHMS = {}


def register_algorithm(name: str):
    def decorator(cls):
        if name in ALGORITHMS:
            raise ValueError(f"algorithm {name!r} is registered twice")
        ALGORITHMS[name] = cls
        cls.NAME = name
        return cls

    return decorator


def get_algorithm_class(name: str):
    """The class registered as `name`; a KeyError (also a UsageError) lists the valid names."""
    if name not in ALGORITHMS:
        raise unknown_name("algorithm", name, sorted(ALGORITHMS))
    return ALGORITHMS[name]
