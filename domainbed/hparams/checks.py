"""Every command-line flag's and hparam's valid range, checked before a run creates anything.

The ranges are declared once, as tables of key -> `Rule`; `check_run_settings(args, hparams)`
walks them and raises a one-line `UsageError` naming the first bad value and its valid range.
Hparams that the table does not know (a new method's own keys) are left to their method.
A nested hparam (`swad_kwargs`) is checked by its dotted path (`swad_kwargs.tolerance_ratio`).
"""

import math
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from domainbed.data.gpu_pipeline import PIPELINES
from domainbed.datasets import get_dataset_class
from domainbed.errors import UsageError
from domainbed.optim.factory import OPTIMIZERS
from domainbed.training.precision import DTYPES
from domainbed.quant.lsq import MAX_BITS, MIN_BITS


@dataclass(frozen=True)
class Rule:
    valid: str  # the valid range, as the error message states it
    accepts: Callable[[object], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(low: int) -> Rule:
    valid = "a positive integer" if low == 1 else f"an integer >= {low}"
    return Rule(valid, lambda v: _is_int(v) and v >= low)


def int_between(low: int, high: int) -> Rule:
    return Rule(f"an integer from {low} to {high}", lambda v: _is_int(v) and low <= v <= high)


def positive_float() -> Rule:
    return Rule("a finite number > 0", lambda v: _is_real(v) and v > 0)


def nonnegative_float() -> Rule:
    return Rule("a finite number >= 0", lambda v: _is_real(v) and v >= 0)


def fraction(low_open: bool = False, high_open: bool = True) -> Rule:
    """A number in [0, 1), or with the given ends open / closed."""
    low, high = "(" if low_open else "[", ")" if high_open else "]"

    def accepts(v):
        return (_is_real(v) and (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1))

    return Rule(f"a number in {low}0, 1{high}", accepts)


def choice(names) -> Rule:
    names = tuple(names)
    return Rule("one of " + ", ".join(map(str, names)), lambda v: v in names)


def optional(rule: Rule) -> Rule:
    """`rule`, or None (the flag left out: the dataset's default)."""
    return Rule(f"{rule.valid} (or left out)", lambda v: v is None or rule.accepts(v))


def _check_device(value) -> None:
    """`value` must name a device this machine has."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    valid = ["auto", "cpu"] + (["cuda", f"cuda:N with N in 0-{count - 1}"] if count else [])
    try:
        device = torch.device(value) if value != "auto" else None
    except (RuntimeError, TypeError, ValueError):
        device = torch.device("meta")
    if device is None or device.type == "cpu":
        return
    if device.type == "cuda" and count and (device.index is None or device.index < count):
        return
    note = " (this machine has no CUDA device)" if device.type == "cuda" and not count else ""
    raise UsageError(f"--device {value!r} is not usable{note}; valid: {', '.join(valid)}")


FLAG_RULES = {
    "steps": optional(int_at_least(1)),
    "checkpoint_freq": optional(int_at_least(1)),
    "holdout_fraction": fraction(low_open=True),  # 0 would leave every out-split empty
    "model_save": optional(int_at_least(0)),
    "tb_freq": int_at_least(0),
}

HPARAM_RULES = {
    # common
    "lr": positive_float(),
    "weight_decay": nonnegative_float(),
    "momentum": fraction(),
    "batch_size": int_at_least(1),
    "test_batchsize": int_at_least(1),
    "image_size": int_at_least(1),
    "resnet_dropout": fraction(),
    "mlp_dropout": fraction(),
    "mlp_width": int_at_least(1),
    "mlp_depth": int_at_least(2),  # input and output layers; mlp_depth - 2 hidden ones, as DomainBed
    "optimizer": choice(sorted(OPTIMIZERS)),
    "num_workers": int_at_least(-1),  # -1: sized to the machine's cores
    "precision": choice(DTYPES),
    "pipeline": choice(PIPELINES),
    # weight averaging
    "sma_start": int_at_least(0),
    "swad_bn_steps": int_at_least(0),
    "swad_kwargs.n_converge": int_at_least(1),
    "swad_kwargs.n_tolerance": int_at_least(0),
    "swad_kwargs.tolerance_ratio": nonnegative_float(),
    # quantization
    "q_steps": int_at_least(0),
    "q_bits": int_between(MIN_BITS, MAX_BITS),
    # sharpness-aware methods and GradSurgery
    "rho": nonnegative_float(),
    "alpha": nonnegative_float(),
    "n_parts": int_at_least(1),
    # RSC
    "rsc_spatial_drop": fraction(),
    "rsc_channel_drop": fraction(),
    "rsc_batch_percent": fraction(high_open=False),
    "rsc_batch_increment": fraction(high_open=False),
    "rsc_batch_interval": fraction(high_open=False),
    "rsc_batch_interval_steps": int_at_least(0),
    "rsc_f_drop_factor": fraction(),
    "rsc_b_drop_factor": fraction(),
    # DMG, CORAL, Mixstyle
    "mask_lr": positive_float(),
    "overlap_lambda": nonnegative_float(),
    "sparsity_lambda": nonnegative_float(),
    "mmd_gamma": nonnegative_float(),
    "mixstyle_p": fraction(high_open=False),
    "mixstyle_alpha": positive_float(),
}


def _flatten(hparams: dict, prefix: str = ""):
    for key, value in hparams.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _check(kind: str, key: str, value, rule: Rule) -> None:
    if not rule.accepts(value):
        raise UsageError(f"{kind}{key} {value!r} is out of range; valid: {rule.valid}")


def check_run_settings(args, hparams: dict) -> None:
    """Raise a one-line UsageError for the first flag or hparam outside its valid range; warn
    (on stderr) about settings that are valid but probably not meant."""
    for key, rule in FLAG_RULES.items():
        if hasattr(args, key):
            _check("--", key, getattr(args, key), rule)
    for key, value in _flatten(hparams):
        if key in HPARAM_RULES:
            _check("hparam ", key, value, HPARAM_RULES[key])

    _check_device(args.device)
    test_envs = args.test_envs or []
    negative = [env for env in test_envs if env < 0]
    if negative:
        raise UsageError(f"--test_envs {negative[0]} is negative; valid: environment indices 0, 1, ...")
    environments = get_dataset_class(args.dataset).ENVIRONMENTS  # None: read from the data folder
    beyond = [env for env in test_envs if environments and env >= len(environments)]
    if beyond:
        raise UsageError(f"--test_envs {beyond[0]} is out of range; valid for {args.dataset}: "
                         + ", ".join(f"{i}={name}" for i, name in enumerate(environments)))
    repeated = sorted({env for env in test_envs if test_envs.count(env) > 1})
    if repeated:
        raise UsageError(f"--test_envs {' '.join(map(str, test_envs))} repeats {', '.join(map(str, repeated))}; "
                         "valid: each environment at most once")

    if args.steps is not None:
        checkpoint_freq = args.checkpoint_freq or get_dataset_class(args.dataset).CHECKPOINT_FREQ
        if args.steps < checkpoint_freq:
            print(f"warning: --steps {args.steps} is smaller than the checkpoint frequency {checkpoint_freq}: "
                  "as SWAD, steps are rounded down to a multiple of it plus one, so the run trains 1 step",
                  file=sys.stderr)
