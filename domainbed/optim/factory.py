"""Build the base optimizer an algorithm steps with, by name, as SWAD's `get_optimizer`.

SWAD's `get_optimizer` passes only lr and weight decay, so its `sgd` is plain SGD; momentum is
the hparam `momentum` (0 by default), which the configs of methods whose official code uses it
(RSC, DMG) set. Adam and AdamW ignore it.
"""

import torch

from domainbed.errors import unknown_choice


def _adam(params, lr, weight_decay, momentum):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _sgd(params, lr, weight_decay, momentum):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def _adamw(params, lr, weight_decay, momentum):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


OPTIMIZERS = {"adam": _adam, "sgd": _sgd, "adamw": _adamw}


def get_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    """`adam` uses coupled L2 weight decay, exactly torch.optim.Adam's `weight_decay`."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise unknown_choice("optimizer", name, sorted(OPTIMIZERS))
    return OPTIMIZERS[key](params, lr, weight_decay, momentum)
