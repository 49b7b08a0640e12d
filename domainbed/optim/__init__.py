"""Optimizers: the factory every algorithm uses, and perturbation wrappers (SAM family)."""

from domainbed.optim.factory import OPTIMIZERS, get_optimizer

__all__ = ["OPTIMIZERS", "get_optimizer"]
