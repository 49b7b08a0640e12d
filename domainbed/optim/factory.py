"""Build the base optimizer an algorithm steps with, by name, as SWAD's `get_optimizer`."""

import torch

from domainbed.errors import unknown_choice


def _adam(params, lr, weight_decay):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _sgd(params, lr, weight_decay):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)


def _adamw(params, lr, weight_decay):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


OPTIMIZERS = {"adam": _adam, "sgd": _sgd, "adamw": _adamw}


def get_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """`adam` uses coupled L2 weight decay, exactly torch.optim.Adam's `weight_decay`."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise unknown_choice("optimizer", name, sorted(OPTIMIZERS))
    return OPTIMIZERS[key](params, lr, weight_decay)
