"""Hyperparameters of a run: registry defaults < config.yaml < extra yaml files < --key value.

Every key must already exist (in the registry's defaults for the algorithm and dataset, or in
the base config.yaml): a typo is an error, never a silently ignored setting. Values from the
command line are parsed by the type of the key's default; booleans accept True/False (any case),
yes/no and 1/0, and a bare `--flag` means True.
"""

import difflib
from pathlib import Path

import yaml

from domainbed.errors import UsageError

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
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
        if default is not None and not isinstance(parsed, type(default)):
            raise bad
        if isinstance(default, dict):
            return {**default, **{k: coerce(f"{key}.{k}", v, default[k], source) if k in default else v
                                  for k, v in parsed.items()}}
        return parsed
    return value


def _check_known(key, valid, source):
    if key not in valid:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown hparam {key!r} from {source}{hint}; valid: {', '.join(sorted(valid))}")


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


def build_hparams(defaults: dict, base_config, extra_configs=(), overrides=()) -> dict:
    """The run's hparams: `defaults` updated by the yaml files in order, then the overrides."""
    hparams = dict(defaults)
    layers = [(str(base_config), load_yaml(base_config), True)] if base_config else []
    layers += [(str(path), load_yaml(path), False) for path in extra_configs]
    for source, content, may_add_keys in layers:
        for key, value in content.items():
            if not may_add_keys:
                _check_known(key, hparams, source)
            hparams[key] = coerce(key, value, hparams[key], source) if key in hparams else value
    for key, value in overrides:
        _check_known(key, hparams, "the command line")
        if value is True and not isinstance(hparams[key], bool):
            raise UsageError(f"hparam {key} needs a value ({_type_name(hparams[key])}, like {hparams[key]!r})")
        hparams[key] = coerce(key, value, hparams[key], "the command line")
    return hparams
