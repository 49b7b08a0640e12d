"""Optimizers: the factory every algorithm uses, DomainBed's LARS, and perturbation wrappers (SAM family)."""

from domainbed.optim.factory import OPTIMIZERS, get_optimizer
from domainbed.optim.lars import LARS
from domainbed.optim.sam import GSAM, SAGM, SAM, frozen_running_stats

__all__ = ["GSAM", "LARS", "OPTIMIZERS", "SAGM", "SAM", "frozen_running_stats", "get_optimizer"]
