"""The dataset registry: `@register_dataset("Name")` on the class is all a dataset needs."""

from domainbed.errors import unknown_name

DATASETS = {}


def register_dataset(name: str):
    def decorator(cls):
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        DATASETS[name] = cls
        cls.NAME = name
        return cls

    return decorator


def get_dataset_class(name: str):
    if name not in DATASETS:
        raise unknown_name("dataset", name, sorted(DATASETS))
    return DATASETS[name]
