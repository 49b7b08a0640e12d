"""Published results, shipped as data (published.yaml beside this file): load, validate, look up.

Each entry is one published line: a method on a dataset under a selection method, its
per-domain and average accuracy with the published spread, the protocol that produced it and
the source it was copied from. The file is for people to edit; `load` refuses an entry that
lacks a field, names an unknown source or protocol, or whose numbers do not fit its dataset.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from domainbed.errors import UsageError

PUBLISHED_PATH = Path(__file__).with_name("published.yaml")

SELECTIONS = ("training-domain", "leave-one-domain-out", "oracle")
AVERAGING = ("none", "SWAD", "SMA", "unstated")
SPREADS = ("SE", "SD", "unstated", "none")
PROTOCOL_KEYS = ("backbone", "pretraining", "image_size", "steps", "batch_size", "hparam_search", "trials",
                 "spread", "split")
SOURCE_KEYS = ("paper", "table", "file", "commit")
ENTRY_KEYS = {"method", "dataset", "selection", "averaging", "quantized", "variant", "domains", "domain_spread",
              "average", "average_spread", "protocol", "source", "note", *PROTOCOL_KEYS}
REQUIRED = ("method", "dataset", "selection", "protocol", "source")


@dataclass
class Published:
    method: str
    dataset: str
    selection: str
    averaging: str
    quantized: bool
    variant: str | None
    domains: list | None  # % per domain in the dataset's ENVIRONMENTS order, or None
    domain_spread: list | None
    average: float | None
    average_spread: float | None
    protocol: dict  # the protocol's keys, with the entry's own overrides
    source_key: str
    source: dict
    note: str = ""
    index: int = field(default=0, compare=False)
    protocol_key: str = ""

    @property
    def citation(self) -> str:
        return f"{self.source['paper']}, {self.source['table']}"

    @property
    def label(self) -> str:
        """How a table names the entry: its source and its protocol (a source may hold several)."""
        return f"{self.source_key} / {self.protocol_key}"

    def standard_error(self, spread) -> float | None:
        """A published +/- as a standard error (%), or None when it cannot be one."""
        kind, trials = self.protocol.get("spread"), self.protocol.get("trials")
        if spread is None:
            return None
        if kind == "SE":
            return float(spread)
        if kind == "SD" and isinstance(trials, int) and trials > 0:
            return float(spread) / trials ** 0.5
        return None


def _fail(path, where, message):
    raise UsageError(f"{path}: {where}: {message}")


def _number_list(path, where, values, name):
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        _fail(path, where, f"{name} must be a list of numbers, not {values!r}")
    return [float(v) for v in values]


def _entry(path, index, raw, sources, protocols) -> Published:
    where = f"entry {index}"
    if not isinstance(raw, dict):
        _fail(path, where, f"an entry is a mapping, not {raw!r}")
    where = f"entry {index} ({raw.get('method')} on {raw.get('dataset')})"
    missing = [key for key in REQUIRED if raw.get(key) in (None, "")]
    if missing:
        _fail(path, where, f"lacks {', '.join(missing)}")
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        _fail(path, where, f"unknown keys {', '.join(unknown)}; valid: {', '.join(sorted(ENTRY_KEYS))}")
    if raw["source"] not in sources:
        _fail(path, where, f"source {raw['source']!r} is not under sources; valid: {', '.join(sources)}")
    if raw["protocol"] not in protocols:
        _fail(path, where, f"protocol {raw['protocol']!r} is not under protocols; valid: {', '.join(protocols)}")
    if raw["selection"] not in SELECTIONS:
        _fail(path, where, f"selection {raw['selection']!r}; valid: {', '.join(SELECTIONS)}")
    averaging = raw.get("averaging", "none")
    if averaging not in AVERAGING:
        _fail(path, where, f"averaging {averaging!r}; valid: {', '.join(AVERAGING)}")
    protocol = {**protocols[raw["protocol"]], **{key: raw[key] for key in PROTOCOL_KEYS if key in raw}}
    if protocol.get("spread") not in SPREADS:
        _fail(path, where, f"spread {protocol.get('spread')!r}; valid: {', '.join(SPREADS)}")
    domains = _number_list(path, where, raw.get("domains"), "domains")
    spread = _number_list(path, where, raw.get("domain_spread"), "domain_spread")
    if spread is not None and (domains is None or len(spread) != len(domains)):
        _fail(path, where, "domain_spread needs one number per domain of domains")
    average = raw.get("average")
    if domains is None and average is None:
        _fail(path, where, "gives no number: neither domains nor average")
    for name in ("average", "average_spread"):
        if raw.get(name) is not None and not isinstance(raw[name], (int, float)):
            _fail(path, where, f"{name} must be a number, not {raw[name]!r}")
    return Published(raw["method"], raw["dataset"], raw["selection"], averaging, bool(raw.get("quantized", False)),
                     raw.get("variant"), domains, spread,
                     None if average is None else float(average),
                     None if raw.get("average_spread") is None else float(raw["average_spread"]),
                     protocol, raw["source"], sources[raw["source"]], raw.get("note") or "", index, raw["protocol"])


def load(path=None) -> list:
    """Every entry of the published file (the packaged one unless `path`), validated."""
    path = Path(path) if path is not None else PUBLISHED_PATH
    if not path.is_file():
        raise UsageError(f"published results file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is no valid YAML: {error}".splitlines()[0]) from None
    if not isinstance(data, dict) or not {"sources", "protocols", "entries"} <= set(data):
        raise UsageError(f"{path}: needs the mappings sources, protocols and entries")
    sources, protocols = data["sources"] or {}, data["protocols"] or {}
    for key, source in sources.items():
        lacking = [name for name in SOURCE_KEYS if not (source or {}).get(name)]
        if lacking:
            _fail(path, f"source {key}", f"lacks {', '.join(lacking)} (every number names where it comes from)")
    for key, protocol in protocols.items():
        lacking = [name for name in PROTOCOL_KEYS if name not in (protocol or {})]
        if lacking:
            _fail(path, f"protocol {key}", f"lacks {', '.join(lacking)} (null where the source does not say)")
    return [_entry(path, index, raw, sources, protocols) for index, raw in enumerate(data["entries"] or [])]


def check_registries(entries) -> list:
    """The problems (one line each) of entries whose method or dataset no registry knows, or whose
    per-domain numbers do not match the dataset's environments."""
    importlib.import_module("domainbed.algorithms")  # registers the algorithms
    importlib.import_module("domainbed.datasets")  # registers the datasets
    from domainbed.algorithms.registry import get_algorithm_class
    from domainbed.datasets.registry import get_dataset_class

    problems = []
    for entry in entries:
        for what, lookup in (("method", get_algorithm_class), ("dataset", get_dataset_class)):
            try:
                lookup(getattr(entry, what))
            except KeyError as error:
                problems.append(f"entry {entry.index}: {error}")
        try:
            environments = get_dataset_class(entry.dataset).ENVIRONMENTS
        except KeyError:
            continue
        if entry.domains is not None and len(entry.domains) != len(environments):
            problems.append(f"entry {entry.index}: {len(entry.domains)} domains for {entry.dataset}, "
                            f"which has {len(environments)}")
    return problems
