"""A run directory as the tools over finished runs see it: one `Run` for collect_results,
ensemble and flatness.

`read_run` needs args.json only, so that it also reads runs still training (collect_results lists
them as incomplete) and runs from before hparams.json was saved; `read_trained_run` is for tools
that load the final models and rebuild the data (ensemble, flatness): it also needs hparams.json
and at least one final model.
"""

from dataclasses import dataclass, field
from pathlib import Path

from domainbed.errors import UsageError
from domainbed.runs import layout, run_files


@dataclass
class Run:
    path: Path
    args: dict
    hparams: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)  # fold (tuple of test envs) -> records in step order
    rows: dict = field(default_factory=dict)  # fold -> {row: accuracy}, from table.json
    names: dict = field(default_factory=dict)  # fold -> the test domain's name, from table.json
    models: dict = field(default_factory=dict)  # test environment -> final model file
    finished: bool = False  # table.json was written
    name: str = ""  # how tools label the run: its directory's name unless they tell runs apart
    group: str = ""  # the method's name in collect_results' tables, which sets it

    def __post_init__(self):
        self.name = self.name or self.path.name

    @property
    def dataset(self) -> str:
        """The dataset as tables name it: your own data (ImageFolder) by its folder's name."""
        return self.args.get("dataset_title", self.args["dataset"])

    @property
    def registered_dataset(self) -> str:
        """The name that rebuilds the data and its hparams (`--dataset`)."""
        return self.args["dataset"]

    @property
    def algorithm(self) -> str:
        return self.args["algorithm"]

    @property
    def trial_seed(self) -> int:
        return self.args.get("trial_seed", 0)

    @property
    def hparams_seed(self) -> int:
        return self.args.get("hparams_seed", 0)

    @property
    def complete(self) -> bool:
        """Finished, with the records of every fold of its table."""
        return self.finished and all(fold in self.records for fold in self.rows)


def read_run(path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run directory {path} does not exist")
    hparams = run_files.read_hparams(path) if layout.hparams_path(path).exists() else {}
    run = Run(path, run_files.read_args(path), hparams, run_files.read_records(path),
              models=layout.final_models(path))
    table = run_files.read_table(path)
    if table is not None:
        run.finished = True
        for env, name in zip(table["test_envs"], table["environments"]):
            run.names[(env,)] = name
            run.rows[(env,)] = {row: values[name] for row, values in table["rows"].items() if name in values}
    return run


def read_trained_run(path) -> Run:
    """A run whose final models can be loaded and whose data can be rebuilt."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run directory {path} does not exist")
    if not layout.final_models(path):
        raise UsageError(f"run directory {path} has no final models ({layout.MODELS}/TE<i>_final.pth); "
                         "did its training finish?")
    run = read_run(path)
    run.hparams = run_files.read_hparams(path)
    return run


def distinct_names(runs) -> list:
    """`runs`, renamed `NAME #2`, `NAME #3` ... where several have the same directory name."""
    seen = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} #{seen[run.name]}"
    return runs


def find_runs(root) -> list:
    """Every run directory under `root` (sweeps nest them in job directories), in path order."""
    return [read_run(path.parent) for path in sorted(Path(root).rglob(layout.ARGS))]
