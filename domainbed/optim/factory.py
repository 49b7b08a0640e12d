"""Build the base optimizer an algorithm steps with, by name, as SWAD's `get_optimizer`.

SWAD's `get_optimizer` passes only lr and weight decay, so its `sgd` is plain SGD; momentum is
the hparam `momentum` (0 by default), which the configs of methods whose official code uses it
(RSC, DMG) set. Adam and AdamW ignore it. `lars` is DomainBed's LARS (domainbed/optim/lars.py),
whose momentum is the same hparam (ERMPlusPlus declares DomainBed's 0.9 for it).
"""

import torch

from domainbed.errors import unknown_choice
from domainbed.hparams.declare import SMALL_IMAGES, common_hparams
from domainbed.hparams.rules import choice, fraction, nonnegative_float, positive_float
from domainbed.optim.lars import LARS


def _adam(params, lr, weight_decay, momentum):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _sgd(params, lr, weight_decay, momentum):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def _adamw(params, lr, weight_decay, momentum):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _lars(params, lr, weight_decay, momentum):
    return LARS(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


OPTIMIZERS = {"adam": _adam, "sgd": _sgd, "adamw": _adamw, "lars": _lars}


def get_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    """`adam` uses coupled L2 weight decay, exactly torch.optim.Adam's `weight_decay`."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise unknown_choice("optimizer", name, sorted(OPTIMIZERS))
    return OPTIMIZERS[key](params, lr, weight_decay, momentum)


@common_hparams
def _optimizer_hparams(hparam, dataset):
    hparam("optimizer", "adam", valid=choice(sorted(OPTIMIZERS)), help="the base optimizer: adam, adamw, sgd or lars")
    hparam("momentum", 0.0, valid=fraction(),
           help="momentum of SGD and LARS (0: plain SGD, as SWAD's; RSC, DMG and ERMPlusPlus use their official 0.9)")
    if dataset in SMALL_IMAGES:
        hparam("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), valid=positive_float(),
               help="learning rate of the base optimizer")
        hparam("weight_decay", 0.0, lambda r: 0.0, valid=nonnegative_float(), help="weight decay of the base optimizer")
    else:
        hparam("lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), valid=positive_float(),
               help="learning rate of the base optimizer")
        hparam("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2), valid=nonnegative_float(),
               help="weight decay of the base optimizer")
