"""DomainBed's own output directories, read as this project's runs so that collect_results and
list_top_hparams select over them with the same rule code (domainbed/results/selection.py).

A DomainBed sweep directory holds one directory per job; each has `results.jsonl`, one record
per checkpoint with `args` (dataset, algorithm, test_envs, hparams_seed, trial_seed, output_dir,
...), `hparams`, `step` and `env{i}_in_acc`, `env{i}_out_acc` (and `env{i}_uda_acc`) for every
environment, and a `done` file once the job finished. A job trains one fold: its `test_envs`.

DomainBed groups records by (trial seed, dataset, algorithm, test environment) and, inside a
group, calls all records of one hparams seed a run, whichever job wrote them: a run here is
therefore every job of one (dataset, algorithm, trial seed, hparams seed), its folds keyed by
their test environments as in this project's runs. Each record becomes one of this project's
records: `train_out` is the mean of `env{i}_out_acc` over the environments outside the fold (as
DomainBed's training-domain validation takes it), `test_in` / `test_out` the mean over the fold's
test environments, `env{i}_in` / `env{i}_out` every environment's accuracy (what leave-one-domain-
out validation reads). The number of environments is DomainBed's count: env0_out_acc, env1_out_acc,
... up to the first missing one.

As DomainBed's collect_results, every record counts, whether or not its job wrote `done`; the
jobs without `done` are named (`Sweep.unfinished`) so a report can say the numbers may move.
"""

import json
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import numpy as np

from domainbed.errors import UsageError
from domainbed.runs.reader import Run

RECORDS = "results.jsonl"
DONE = "done"


def _first_record(path: Path):
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    return None


def is_domainbed_dir(directory) -> bool:
    """Whether `directory` holds a results.jsonl whose records are DomainBed's (with `args` and
    `hparams` on each line), as opposed to this project's (a fold's numbers only)."""
    path = Path(directory) / RECORDS
    if not path.is_file():
        return False
    record = _first_record(path)
    return isinstance(record, dict) and isinstance(record.get("args"), dict) and "hparams" in record


def find_dirs(root) -> list:
    """Every DomainBed job directory under `root`, in path order (DomainBed reads only `root`'s
    children; sweeps nested one level deeper are read too)."""
    return [path.parent for path in sorted(Path(root).rglob(RECORDS)) if is_domainbed_dir(path.parent)]


def read_records(directory) -> list:
    records = []
    path = Path(directory) / RECORDS
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{path} line {number} is not valid JSON: {error}") from None
        missing = [key for key in ("args", "hparams", "step") if key not in record]
        if missing:
            raise UsageError(f"{path} line {number} lacks {', '.join(missing)}; a DomainBed record has args, "
                             "hparams, step and env<i>_in_acc / env<i>_out_acc")
        records.append(record)
    return records


def n_environments(record) -> int:
    """DomainBed's count: env0_out_acc, env1_out_acc, ... up to the first missing one."""
    return next(i for i in count() if f"env{i}_out_acc" not in record)


def fold_record(record) -> dict:
    """A DomainBed record as this project's record of the fold holding out its `test_envs`."""
    test_envs = list(record["args"]["test_envs"])
    environments = range(n_environments(record))
    training = [i for i in environments if i not in test_envs]
    converted = {"test_envs": test_envs, "step": record["step"],
                 "train_out": float(np.mean([record[f"env{i}_out_acc"] for i in training])) if training else np.nan,
                 "test_in": float(np.mean([record[f"env{i}_in_acc"] for i in test_envs])),
                 "test_out": float(np.mean([record[f"env{i}_out_acc"] for i in test_envs]))}
    for i in environments:
        converted[f"env{i}_in"] = record[f"env{i}_in_acc"]
        converted[f"env{i}_out"] = record[f"env{i}_out_acc"]
    if "loss" in record:
        converted["loss"] = record["loss"]
    return converted


def environment_names(dataset: str, n: int) -> list:
    """DomainBed's column names: the dataset's ENVIRONMENTS where this project registers it with
    `n` environments, else env0, env1, ..."""
    from domainbed.datasets import DATASETS, get_dataset_class

    if dataset in DATASETS:
        names = list(get_dataset_class(dataset).ENVIRONMENTS or [])
        if len(names) == n:
            return names
    return [f"env{i}" for i in range(n)]


@dataclass
class Sweep:
    runs: list  # Run per (dataset, algorithm, trial seed, hparams seed)
    environments: dict  # dataset -> its environments' names, in index order
    n_records: int = 0
    unfinished: list = field(default_factory=list)  # job directories without `done`
    directories: dict = field(default_factory=dict)  # run_key(run) -> {job directory: its test envs}

    def output_dirs(self, run, test_env=None) -> list:
        """The job directories behind a run (those holding `test_env` out), as DomainBed's
        list_top_hparams lists them."""
        jobs = self.directories.get(run_key(run), {})
        return [path for path, test_envs in jobs.items() if test_env is None or test_env in test_envs]


def run_key(run) -> tuple:
    return run.dataset, run.algorithm, run.trial_seed, run.hparams_seed


def read_sweep(root) -> Sweep:
    """The runs of every DomainBed job directory under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; give a DomainBed sweep's output directory")
    runs, environments, n_records, unfinished, directories = {}, {}, 0, [], {}
    for directory in find_dirs(root):
        if not (directory / DONE).exists():
            unfinished.append(directory)
        for record in read_records(directory):
            n_records += 1
            args = record["args"]
            key = (args["dataset"], args["algorithm"], args["trial_seed"], args["hparams_seed"])
            if key not in runs:
                runs[key] = Run(directory, dict(args), dict(record["hparams"]), finished=True, group=args["algorithm"])
            run = runs[key]
            directories.setdefault(key, {})[directory] = tuple(args["test_envs"])
            converted = fold_record(record)
            run.records.setdefault(tuple(converted["test_envs"]), []).append(converted)
            environments.setdefault(args["dataset"], n_environments(record))
    for run in runs.values():
        for fold, records in run.records.items():
            records.sort(key=lambda record: record["step"])  # stable: a job's records keep their order
            if len(fold) == 1:
                run.rows[fold] = {}
    names = {dataset: environment_names(dataset, n) for dataset, n in environments.items()}
    for run in runs.values():
        run.names = {(i,): name for i, name in enumerate(names[run.dataset])}
    return Sweep(list(runs.values()), names, n_records, unfinished, directories)
