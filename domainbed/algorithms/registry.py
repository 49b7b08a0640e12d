"""The algorithm registry: `@register_algorithm("Name")` on the class is all a method needs, in
this package, in an installed package's entry points, or named `package.module:Class`."""

from domainbed.registry import Registry, subclass_of


def _check_algorithm(obj, path) -> None:
    from domainbed.algorithms.base import Algorithm

    subclass_of(Algorithm, "an algorithm")(obj, path)


_ALGORITHMS = Registry("algorithm", check=_check_algorithm)
ALGORITHMS = _ALGORITHMS.entries
register_algorithm = _ALGORITHMS.register
get_algorithm_class = _ALGORITHMS.get
