"""The dataset registry: `@register_dataset("Name")` on the class is all a dataset needs."""

from domainbed.registry import Registry

_DATASETS = Registry("dataset")
DATASETS = _DATASETS.entries
register_dataset = _DATASETS.register
get_dataset_class = _DATASETS.get
