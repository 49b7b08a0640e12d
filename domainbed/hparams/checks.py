"""The one place that decides whether a run's flags and hparams are valid, before it creates
anything or reads any data.

Hparams are checked against the valid ranges their declarations give (domainbed/hparams/declare.py:
the algorithm's own, every algorithm's, and the run-level features', averaging and quantization
included); the command line's flags against `FLAG_RULES`. The first bad value is a one-line
`UsageError` naming it and its valid range. A nested hparam (`swad_kwargs`) is checked leaf by
leaf, by its dotted path (`swad_kwargs.tolerance_ratio`).
"""

import torch

from domainbed import hparams_registry
from domainbed.datasets import get_dataset_class
from domainbed.errors import UsageError
from domainbed.hparams.rules import Rule, fraction, int_at_least, optional
from domainbed.training.precision import check_precision


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

def _check(kind: str, key: str, value, rule: Rule) -> None:
    if not rule.accepts(value):
        raise UsageError(f"{kind}{key} {value!r} is out of range; valid: {rule.valid}")


def check_hparams(algorithm: str, dataset: str, hparams: dict) -> None:
    """Every hparam within the valid range its declaration gives."""
    declared = hparams_registry.declarations(algorithm, dataset)
    for key, value in hparams.items():
        valid = declared[key].valid if key in declared else None
        if isinstance(valid, Rule):
            _check("hparam ", key, value, valid)
        elif isinstance(valid, dict):
            if not isinstance(value, dict):
                raise UsageError(f"hparam {key} {value!r} is not a mapping; valid: a mapping of "
                                 + ", ".join(valid))
            for leaf, inner in value.items():
                if leaf not in valid:
                    raise UsageError(f"unknown hparam {key}.{leaf}; valid: "
                                     + ", ".join(f"{key}.{name}" for name in valid))
                _check("hparam ", f"{key}.{leaf}", inner, valid[leaf])


def check_run_settings(args, hparams: dict) -> None:
    """Raise a one-line UsageError for the first flag or hparam outside its valid range."""
    for key, rule in FLAG_RULES.items():
        if hasattr(args, key):
            _check("--", key, getattr(args, key), rule)
    check_hparams(args.algorithm, args.dataset, hparams)

    _check_device(args.device)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    check_precision(hparams.get("precision", "fp32"), device)
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
    if hparams.get("examples_per_domain") and getattr(args, "split", "random") == "official":
        raise UsageError(f"--examples_per_domain {hparams['examples_per_domain']} samples the data before DomainBed's "
                         "random split; with --split official the kfold lists fix the items: drop one of the two")
