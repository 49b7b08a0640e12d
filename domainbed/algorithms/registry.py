"""The algorithm registry: `@register_algorithm("Name")` on the class is all a method needs."""

from domainbed.registry import Registry

_ALGORITHMS = Registry("algorithm")
ALGORITHMS = _ALGORITHMS.entries
register_algorithm = _ALGORITHMS.register
get_algorithm_class = _ALGORITHMS.get
