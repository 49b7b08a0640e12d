"""Hyperparameters of a run: registry defaults < config.yaml < the algorithm's own run settings
< extra yaml files < --key value.

config.yaml is SWAD's, the protocol of the seeds that fork SWAD's code. A method from another
repository whose config.yaml differs declares the difference (`Algorithm.own_run_settings`,
MIRO's `swad: False`), which applies over config.yaml and under what the user gives, so its
published lines run as its own code ran them.

Every key must be declared (by the algorithm, by what every algorithm has, or by a run-level
feature: domainbed/hparams/declare.py): a typo is an error, never a silently ignored setting. Values from the
command line are parsed by the type of the key's default; booleans accept True/False (any case),
yes/no and 1/0, and a bare `--flag` means True.

As sconf (SWAD's config library) does, a key inside a nested mapping is set on the command line
by its dotted path (`--swad_kwargs.tolerance_ratio 0.2`) or by its leaf name alone when that leaf
is unique (`--tolerance_ratio 0.2`, SWAD's published VLCS line); an ambiguous leaf is an error
listing its paths. The seeds' own hparam names that we spell differently are aliases (`ALIASES`):
SWAD's, and MIRO's `--model` for `--backbone`.
"""

import difflib
from pathlib import Path

import yaml

from domainbed.errors import UsageError

COMMAND_LINE = "the command line"  # the source named in errors about a --key value

# SWAD's config.yaml at the top of the repository: the protocol's run settings
BASE_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UsageError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UsageError(f"config file {path} must hold a mapping of key: value, not {type(content).__name__}")
    return content


def _type_name(value) -> str:
    return type(value).__name__


def coerce(key: str, value, default, source: str):
    """`value` (a string from the command line, or a YAML value) as the type of `default`."""
    bad = UsageError(
        f"hparam {key} expects {_type_name(default)} (like {default!r}) but got {value!r} from {source}"
    )
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise bad
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if isinstance(default, str):
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    if isinstance(default, (dict, list)) or default is None:
        try:
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
        except yaml.YAMLError as error:
            raise UsageError(f"hparam {key} from {source} is not valid YAML ({str(error).splitlines()[0]}): "
                             f"{value!r}; give a mapping like {default!r}") from None
        if default is not None and not isinstance(parsed, type(default)):
            raise bad
        if isinstance(default, dict):
            return {**default, **{k: coerce(f"{key}.{k}", v, default[k], source) if k in default else v
                                  for k, v in parsed.items()}}
        return parsed
    return value


class UnknownHparamError(UsageError):
    """An unknown key; its "did you mean" also weighs `flags` (`--data_dir`), which the command
    line's parser knows and this layer does not."""

    def __init__(self, key: str, valid, source: str, flags=()):
        candidates = {name: name for name in valid} | {flag.lstrip("-"): flag for flag in flags}
        close = difflib.get_close_matches(key, list(candidates), n=1)
        hint = f" (did you mean {candidates[close[0]]}?)" if close else ""
        super().__init__(f"unknown hparam {key!r} from {source}{hint}; valid: {', '.join(sorted(valid))}")
        self.key, self.valid, self.source = key, list(valid), source


def _check_known(key, valid, source):
    if key not in valid:
        raise UnknownHparamError(key, valid, source)


def _swad_resnet18(value):
    return "backbone", "resnet18" if coerce("resnet18", value, False, COMMAND_LINE) else "resnet50"


def _swad_unsupported(name):
    def translate(value):
        if coerce(name, value, False, COMMAND_LINE):
            raise UsageError(f"hparam {name} (SWAD's) is not supported here; valid: False")
        return None, None

    return translate


def _miro_model(value):
    return "backbone", value


# a seed's hparam name -> translate(raw value) -> (our key, value), or (None, None) to drop it
ALIASES = {
    "model": _miro_model,  # MIRO's name of the backbone (its README's `--model swag_regnety_16gf`)
    "resnet18": _swad_resnet18,
    "class_balanced": _swad_unsupported("class_balanced"),
    "val_augment": _swad_unsupported("val_augment"),
    "indomain_test": _swad_unsupported("indomain_test"),
}


def nested_paths(hparams: dict) -> list:
    """Every dotted path to a key inside a nested mapping, e.g. `swad_kwargs.tolerance_ratio`."""
    return [f"{top}.{leaf}" for top, value in hparams.items() if isinstance(value, dict) for leaf in value]


def resolve_key(key: str, hparams: dict, source: str) -> str:
    """The hparam (or dotted path) that a command-line `key` names, as sconf resolves it."""
    if key in hparams:
        return key
    paths = nested_paths(hparams)
    if "." in key:
        _check_known(key, [*hparams, *paths], source)
        return key
    candidates = [path for path in paths if path.rsplit(".", 1)[1] == key]
    if len(candidates) > 1:
        raise UsageError(f"hparam {key!r} from {source} is ambiguous; give one of {', '.join(candidates)}")
    if not candidates:
        _check_known(key, [*hparams, *paths, *ALIASES], source)
    return candidates[0]


def _set(hparams: dict, key: str, value, source: str) -> None:
    """Set a top-level hparam or a dotted path, parsed by the type of its default."""
    top, _, leaf = key.partition(".")
    if not leaf:
        if value is True and not isinstance(hparams[key], bool):
            raise UsageError(f"hparam {key} needs a value ({_type_name(hparams[key])}, like {hparams[key]!r})")
        hparams[key] = coerce(key, value, hparams[key], source)
        return
    default = hparams[top][leaf]
    if value is True and not isinstance(default, bool):
        raise UsageError(f"hparam {key} needs a value ({_type_name(default)}, like {default!r})")
    hparams[top] = {**hparams[top], leaf: coerce(key, value, default, source)}


def parse_overrides(tokens) -> list:
    """[(key, raw value)] from `--key value`, `--key=value` and bare `--flag` tokens."""
    overrides = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unexpected argument {token!r}; hparams are given as --key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            index += 1
        elif index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
            value = tokens[index + 1]
            index += 2
        else:
            value = True
            index += 1
        overrides.append((key, value))
    return overrides


def _apply_yaml(hparams: dict, path) -> None:
    for key, value in load_yaml(path).items():
        _check_known(key, hparams, str(path))
        hparams[key] = coerce(key, value, hparams[key], str(path))


def build_hparams(defaults: dict, base_config, extra_configs=(), overrides=(), own_settings=None,
                  own_source: str = "the algorithm's own run settings") -> dict:
    """The run's hparams: `defaults` updated by `base_config`, then `own_settings` (the
    algorithm's own run settings, named `own_source` in errors), then the extra yaml files in
    order, then the overrides."""
    hparams = dict(defaults)
    if base_config:
        _apply_yaml(hparams, base_config)
    for key, value in (own_settings or {}).items():
        _check_known(key, hparams, own_source)
        hparams[key] = coerce(key, value, hparams[key], own_source)
    for path in extra_configs:
        _apply_yaml(hparams, path)
    for key, value in overrides:
        if key in ALIASES and key not in hparams:
            key, value = ALIASES[key](value)
            if key is None:
                continue
        _set(hparams, resolve_key(key, hparams, COMMAND_LINE), value, COMMAND_LINE)
    return hparams


def flatten(hparams: dict) -> dict:
    """{key or dotted path: value}, nested mappings spelled out as sconf prints them."""
    flat = {}
    for key, value in hparams.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{leaf}": inner for leaf, inner in value.items()})
        else:
            flat[key] = value
    return flat


def run_hparams(algorithm: str, dataset: str, hparams_seed: int = 0, trial_seed: int = 0, extra_configs=(),
                overrides=()) -> dict:
    """A run's hparams: the registry's defaults or draw (`--hparams_seed`) and the run settings'
    defaults, then config.yaml, the algorithm's own run settings, the extra yaml files and the
    command line's `--key value` pairs."""
    from domainbed import hparams_registry

    drawn = hparams_registry.search_hparams(algorithm, dataset, hparams_seed, trial_seed)
    defaults = {**drawn, **hparams_registry.run_setting_defaults(algorithm, dataset)}
    return build_hparams(defaults, BASE_CONFIG, extra_configs, overrides,
                         hparams_registry.own_run_settings(algorithm, dataset), f"{algorithm}.own_run_settings")
