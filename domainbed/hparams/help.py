"""`train_all.py --algorithm NAME --help`: the hparams of a method on a dataset, each with its
default (after config.yaml), its valid range and its one line of meaning, all from the
declarations (domainbed/hparams/declare.py)."""

from domainbed import hparams_registry
from domainbed.errors import UsageError
from domainbed.hparams.config import run_hparams
from domainbed.hparams.rules import Rule


def _meaning(hparam) -> str:
    if isinstance(hparam.valid, Rule):
        return f"{hparam.help} [{hparam.valid.valid}]"
    return hparam.help


def hparams_help(algorithm: str, dataset: str) -> str:
    """The hparams of `algorithm` on `dataset` with their defaults and meaning."""
    try:
        defaults = run_hparams(algorithm, dataset)
        declared = hparams_registry.declarations(algorithm, dataset)
        own = hparams_registry.own_run_settings(algorithm, dataset)
    except (KeyError, UsageError) as error:
        return f"hparams: none listed ({error})"
    settings = f"config.yaml, then {algorithm}'s own {', '.join(own)}" if own else "config.yaml"
    sections = {
        f"hparams of {algorithm}": [key for key in defaults if declared[key].owner == algorithm],
        "hparams of every algorithm": [key for key in defaults if declared[key].owner == "common"],
        f"run settings ({settings})": [key for key in defaults if declared[key].owner == "run"],
    }
    lines = [f"hparams on {dataset} (set any with --key value; defaults < config.yaml < yaml files < command line):"]
    for title, keys in sections.items():
        if not keys:
            continue
        lines.append(f"  {title}:")
        for key in keys:
            value = defaults[key]
            flag = f"--{key} {value if value != '' else repr(value)}"
            meaning = _meaning(declared[key])
            lines.append(f"    {flag:<30} {meaning}" if len(flag) < 30 else f"    {flag}\n    {'':<30} {meaning}")
    return "\n".join(lines) + "\n"
