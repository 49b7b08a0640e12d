"""`train_all.py --algorithm NAME --help`: the hparams of a method on a dataset, with their
defaults and one line of meaning each."""

from domainbed import hparams_registry
from domainbed.errors import UsageError
from domainbed.hparams.config import BASE_CONFIG, build_hparams, load_yaml
from domainbed.hparams_help import describe


def hparams_help(algorithm: str, dataset: str) -> str:
    """The hparams of `algorithm` on `dataset` with their defaults (registry < config.yaml) and meaning."""
    try:
        defaults = build_hparams(hparams_registry.default_hparams(algorithm, dataset), BASE_CONFIG)
        common = hparams_registry.default_hparams("ERM", dataset)
    except (KeyError, UsageError) as error:
        return f"hparams: none listed ({error})"
    run_settings = set(load_yaml(BASE_CONFIG))
    sections = {
        f"hparams of {algorithm}": [key for key in defaults if key not in common and key not in run_settings],
        "hparams of every algorithm": [key for key in defaults if key in common],
        "run settings (config.yaml)": [key for key in defaults if key in run_settings],
    }
    lines = [f"hparams on {dataset} (set any with --key value; defaults < config.yaml < yaml files < command line):"]
    for title, keys in sections.items():
        if not keys:
            continue
        lines.append(f"  {title}:")
        for key in keys:
            value = defaults[key]
            flag = f"--{key} {value if value != '' else repr(value)}"
            meaning = describe(key, algorithm) or "(no description)"
            lines.append(f"    {flag:<30} {meaning}" if len(flag) < 30 else f"    {flag}\n    {'':<30} {meaning}")
    return "\n".join(lines) + "\n"
