"""Results of many runs: DomainBed's model selection over hparams, tables and plots.

    python -m domainbed.scripts.collect_results DIR [--markdown | --latex] [--plots]

Reads every run under DIR (a directory train_all.py wrote: args.json, results.jsonl, and
table.json once it finished; sweeps nest them in job directories). A run is one hparams
candidate for its (dataset, algorithm, trial seed). For each selection method and each test
domain, as DomainBed's collect_results:

1. every run gets a (validation accuracy, test accuracy) pair for the fold:
   - training-domain validation: the checkpoint of best training-domain validation accuracy
     (`train_out`, the mean over the training domains' held-out splits) and its test accuracy;
   - test-domain validation (oracle): the last checkpoint, validated on the test domain's held-out
     split (`test_out`); DomainBed's oracle allows no early stopping, unlike the per-run table's
     `oracle` row;
   - averaged models (`SWAD`, `IIDMax`, `SMA`: any row R of a run's table with an `R (inD)`
     companion): the average's test accuracy R, validated by its training-domain validation
     accuracy `R (inD)`;
2. the run of best validation accuracy is chosen (ties: the lowest hparams seed), and its test
   accuracy is that trial's result;
3. a cell is the mean +- standard error over trial seeds, where the standard error is DomainBed's
   np.std (ddof 0) / sqrt(n), so the numbers compare with published DomainBed tables. A dataset's
   `Avg` is the mean of its domains' means (no error bar, as DomainBed); the summary across
   datasets gives, per dataset, the mean +- standard error over trial seeds of each trial's
   average over the domains (only trials with every domain), and their mean.

Runs without table.json are incomplete: listed at the end and left out of every number. The
report is printed and written to DIR/results.{txt,md,tex}; `--plots` writes PNGs under
DIR/plots: per dataset and selection method, the per-domain accuracy with error bars of every
algorithm, and per run its training curves (loss, training-domain validation and test accuracy
against step, one line per fold).
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prettytable import PrettyTable, TableStyle

from domainbed.errors import UsageError
from domainbed.selection import ROWS as RECORD_ROWS

TRAINING_DOMAIN = "Training-domain validation"
ORACLE = "Test-domain validation (oracle)"


@dataclass
class Run:
    path: Path
    dataset: str
    algorithm: str
    trial_seed: int
    hparams_seed: int
    records: dict  # fold (tuple of test envs) -> records in step order
    rows: dict = field(default_factory=dict)  # fold -> {row: accuracy}, from table.json
    names: dict = field(default_factory=dict)  # fold -> the test domain's name
    complete: bool = False


def _fold(test_envs) -> tuple:
    return tuple(test_envs)


def load_run(run_dir: Path) -> Run:
    args = json.loads((run_dir / "args.json").read_text())
    records = {}
    results = run_dir / "results.jsonl"
    for line in results.read_text().splitlines() if results.exists() else []:
        if line.strip():
            record = json.loads(line)
            records.setdefault(_fold(record["test_envs"]), []).append(record)
    for fold_records in records.values():
        fold_records.sort(key=lambda record: record["step"])
    run = Run(run_dir, args["dataset"], args["algorithm"], args.get("trial_seed", 0), args.get("hparams_seed", 0),
              records)
    table_path = run_dir / "table.json"
    if table_path.exists():
        table = json.loads(table_path.read_text())
        for env, name in zip(table["test_envs"], table["environments"]):
            fold = _fold([env])
            run.names[fold] = name
            run.rows[fold] = {row: values[name] for row, values in table["rows"].items() if name in values}
        run.complete = all(fold in records for fold in run.rows)
    return run


def load_runs(root) -> list:
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; give the output directory of train_all.py or of a sweep")
    return [load_run(path.parent) for path in sorted(root.rglob("args.json"))]


def _training_domain(run, fold):
    best = max(run.records[fold], key=lambda record: record["train_out"])  # the earliest on ties
    return best["train_out"], best["test_in"]


def _oracle(run, fold):
    last = run.records[fold][-1]
    return last["test_out"], last["test_in"]


def _averaged(row):
    def pair(run, fold):
        rows = run.rows[fold]
        return (rows[f"{row} (inD)"], rows[row]) if row in rows and f"{row} (inD)" in rows else None

    return pair


def selection_methods(runs) -> dict:
    """{method name: run_result(run, fold) -> (validation accuracy, test accuracy) or None}."""
    methods = {TRAINING_DOMAIN: _training_domain, ORACLE: _oracle}
    averaged = {row for run in runs for rows in run.rows.values() for row in rows
                if row not in RECORD_ROWS and f"{row} (inD)" in rows}
    for row in sorted(averaged):
        methods[f"{row} (averaged model), training-domain validation"] = _averaged(row)
    return methods


@dataclass
class Choice:
    run: Run
    validation: float
    test: float


def mean_se(values) -> tuple:
    """(mean, standard error as DomainBed: np.std with ddof 0 over sqrt(n))."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std() / np.sqrt(len(values)))


@dataclass
class Results:
    runs: list
    methods: list
    choices: dict  # (method, dataset, algorithm, trial_seed, fold) -> Choice
    folds: dict  # dataset -> [fold, ...] in order
    names: dict  # (dataset, fold) -> domain name

    @property
    def complete(self) -> list:
        return [run for run in self.runs if run.complete]

    @property
    def incomplete(self) -> list:
        return [run for run in self.runs if not run.complete]

    def datasets(self) -> list:
        return sorted(self.folds)

    def algorithms(self, dataset=None) -> list:
        return sorted({run.algorithm for run in self.complete if dataset in (None, run.dataset)})

    def trial_results(self, method, dataset, algorithm, fold) -> dict:
        """{trial seed: selected test accuracy}."""
        return {key[3]: choice.test for key, choice in self.choices.items()
                if key[:3] == (method, dataset, algorithm) and key[4] == fold}

    def cell(self, method, dataset, algorithm, fold):
        """(mean, standard error) over trial seeds, or None without any."""
        values = list(self.trial_results(method, dataset, algorithm, fold).values())
        return mean_se(values) if values else None

    def dataset_average(self, method, dataset, algorithm):
        """The mean of the domains' means, or None when a domain has no result."""
        cells = [self.cell(method, dataset, algorithm, fold) for fold in self.folds[dataset]]
        return None if None in cells else float(np.mean([c[0] for c in cells]))

    def summary_cell(self, method, dataset, algorithm):
        """(mean, standard error) over the trials that have every domain of the dataset."""
        per_fold = [self.trial_results(method, dataset, algorithm, fold) for fold in self.folds[dataset]]
        trials = set.intersection(*(set(results) for results in per_fold)) if per_fold else set()
        averages = [np.mean([results[trial] for results in per_fold]) for trial in sorted(trials)]
        return mean_se(averages) if averages else None


def collect(root) -> Results:
    runs = load_runs(root)
    complete = sorted((run for run in runs if run.complete), key=lambda run: (run.hparams_seed, str(run.path)))
    methods = selection_methods(complete)
    choices, folds, names = {}, {}, {}
    for run in complete:
        for fold in run.rows:
            names[(run.dataset, fold)] = run.names[fold]
            folds.setdefault(run.dataset, set()).add(fold)
    for method, run_result in methods.items():
        for run in complete:
            for fold in run.rows:
                pair = run_result(run, fold)
                if pair is None:
                    continue
                key = (method, run.dataset, run.algorithm, run.trial_seed, fold)
                if key not in choices or pair[0] > choices[key].validation:
                    choices[key] = Choice(run, *pair)
    return Results(runs, list(methods), choices, {d: sorted(f) for d, f in folds.items()}, names)


# Reporting


STYLES = ("text", "markdown", "latex")


def _number(cell, style) -> str:
    if cell is None:
        return "X"
    if isinstance(cell, float):
        return f"{100 * cell:.1f}"
    mean, se = cell
    plus_minus = {"text": "+/-", "markdown": "±", "latex": "$\\pm$"}[style]
    return f"{100 * mean:.1f} {plus_minus} {100 * se:.1f}"


def _render(title, header, rows, style) -> str:
    if style == "latex":
        escape = str.maketrans({"_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#"})
        title, header = title.translate(escape), [name.translate(escape) for name in header]
        rows = [[row[0].translate(escape), *row[1:]] for row in rows]
    table = PrettyTable(header)
    table.align[header[0]] = "l"
    for row in rows:
        table.add_row(row)
    if style == "latex":
        return f"\\subsubsection*{{{title}}}\n" + table.get_latex_string(format=True)
    if style == "markdown":
        table.set_style(TableStyle.MARKDOWN)
        return f"#### {title}\n\n" + table.get_string()
    table.title = title
    return table.get_string()


def _heading(text, style) -> str:
    return {"text": f"=== {text} ===", "markdown": f"### {text}", "latex": f"\\subsection*{{{text}}}"}[style]


def format_report(results: Results, style: str = "text") -> str:
    if style not in STYLES:
        raise UsageError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
    parts = []
    if not results.complete:
        parts.append("No complete runs.")
    for method in results.methods:
        parts.append(_heading(method, style))
        for dataset in results.datasets():
            folds = results.folds[dataset]
            header = ["Algorithm", *(results.names[(dataset, fold)] for fold in folds), "Avg"]
            rows = []
            for algorithm in results.algorithms(dataset):
                cells = [_number(results.cell(method, dataset, algorithm, fold), style) for fold in folds]
                rows.append([algorithm, *cells, _number(results.dataset_average(method, dataset, algorithm), style)])
            parts.append(_render(dataset, header, rows, style))
        datasets = results.datasets()
        rows = []
        for algorithm in results.algorithms():
            cells = [results.summary_cell(method, dataset, algorithm) for dataset in datasets]
            average = None if None in cells else float(np.mean([c[0] for c in cells]))
            rows.append([algorithm, *(_number(c, style) for c in cells), _number(average, style)])
        parts.append(_render("Averages over datasets", ["Algorithm", *datasets, "Avg"], rows, style))
    incomplete = results.incomplete
    if incomplete:
        lines = [f"Incomplete runs, left out of every number above ({len(incomplete)}):"]
        for run in incomplete:
            progress = ", ".join(f"TE{','.join(map(str, fold))} at step {records[-1]['step']}"
                                 for fold, records in sorted(run.records.items())) or "no records yet"
            lines.append(f"  {run.path}: {run.dataset} {run.algorithm} hparams_seed {run.hparams_seed} "
                         f"trial_seed {run.trial_seed} ({progress})")
        parts.append(_heading("Incomplete runs", style) + "\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


# Plots


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def plot_accuracies(results: Results, method: str, dataset: str, path: Path) -> None:
    from matplotlib.figure import Figure

    folds = results.folds[dataset]
    algorithms = results.algorithms(dataset)
    figure = Figure(figsize=(1.5 + 1.2 * len(folds) * max(1, len(algorithms)) / 2, 4), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(algorithms))
    for index, algorithm in enumerate(algorithms):
        cells = [results.cell(method, dataset, algorithm, fold) for fold in folds]
        x = [position + (index - (len(algorithms) - 1) / 2) * width for position in range(len(folds))]
        means = [100 * c[0] if c else np.nan for c in cells]
        errors = [100 * c[1] if c else 0.0 for c in cells]
        axes.bar(x, means, width, yerr=errors, capsize=3, label=algorithm)
    axes.set_xticks(range(len(folds)), [results.names[(dataset, fold)] for fold in folds])
    axes.set_ylabel("test-domain accuracy (%)")
    axes.set_title(f"{dataset}: {method}", fontsize=9)
    axes.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def plot_curves(run: Run, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.5), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for fold, records in sorted(run.records.items()):
        label = "TE" + ",".join(map(str, fold))
        steps = [record["step"] for record in records]
        if "loss" in records[0]:
            loss_axes.plot(steps, [record["loss"] for record in records], label=label)
        line, = accuracy_axes.plot(steps, [100 * record["test_in"] for record in records], label=f"{label} test")
        accuracy_axes.plot(steps, [100 * record["train_out"] for record in records], linestyle="--",
                           color=line.get_color(), label=f"{label} validation")
    loss_axes.set(xlabel="step", ylabel="training loss")
    accuracy_axes.set(xlabel="step", ylabel="accuracy (%)")
    for axes in (loss_axes, accuracy_axes):
        axes.legend(fontsize=7)
    figure.suptitle(f"{run.dataset} {run.algorithm} hparams_seed {run.hparams_seed} trial_seed {run.trial_seed}",
                    fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def write_plots(results: Results, root: Path, out_dir: Path) -> list:
    paths = []
    for method in results.methods:
        for dataset in results.datasets():
            path = out_dir / f"accuracy_{_slug(dataset)}_{_slug(method)}.png"
            plot_accuracies(results, method, dataset, path)
            paths.append(path)
    for run in results.runs:
        if run.records:
            path = out_dir / "curves" / _slug(run.dataset) / f"{_slug(str(run.path.relative_to(root)))}.png"
            plot_curves(run, path)
            paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Model selection over hparams and tables of many runs")
    parser.add_argument("input_dir")
    style = parser.add_mutually_exclusive_group()
    style.add_argument("--markdown", action="store_true")
    style.add_argument("--latex", action="store_true")
    parser.add_argument("--plots", action="store_true", help="write PNGs under INPUT_DIR/plots")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        root = Path(args.input_dir)
        results = collect(root)
        style = "latex" if args.latex else "markdown" if args.markdown else "text"
        report = format_report(results, style)
        print(report, end="")
        suffix = {"text": "txt", "markdown": "md", "latex": "tex"}[style]
        (root / f"results.{suffix}").write_text(report)
        if args.plots:
            paths = write_plots(results, root, root / "plots")
            print(f"wrote {len(paths)} plots under {root / 'plots'}")
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
