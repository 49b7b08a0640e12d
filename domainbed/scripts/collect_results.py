"""Results of many runs: DomainBed's model selection over hparams, tables and plots.

    python -m domainbed.scripts.collect_results DIR [--markdown | --latex] [--plots] [--group_by KEY ...]

Reads every run under DIR (a directory train_all.py wrote: args.json, hparams.json, results.jsonl,
and table.json once it finished; sweeps nest them in job directories). Runs are grouped by
method: a group is the algorithm plus, with a `--tag`, that tag, and without one every hparam
that the run set differently from the registry's draw for its hparams seed and config.yaml
(so ERM, ERM with `--swad LossValley` and ERM with `--quant 1 --q_bits 4` are three rows, while
the random hparams of a DomainBed search stay inside one group); hparams that change how a run
is computed, not what (num_workers, pipeline, ...), are left out. `--group_by KEY ...` groups
by the named keys of args.json or hparams.json instead. A run is one hparams candidate for its
(dataset, group, trial seed). For each selection method and each test domain, as DomainBed's
collect_results:

1. every run gets a (validation accuracy, test accuracy) pair for the fold:
   - training-domain validation: the checkpoint of best training-domain validation accuracy
     (`train_out`, the mean over the training domains' held-out splits) and its test accuracy;
   - leave-one-domain-out cross-validation, for runs trained with `--pair_folds` (the table
     appears when some run has pair folds): the checkpoint of best mean, over the other
     environments j, of the accuracy on environment j of the fold holding out the test domain and
     j at the same step (domainbed/results/selection.py, as DomainBed's); a run whose pair folds
     are missing has no such result;
   - test-domain validation (DomainBed's oracle): the last checkpoint, validated on the test
     domain's held-out split (`test_out`); it allows no early stopping, unlike the per-run table's
     `oracle` row, which is SWAD's (the checkpoint of best `test_out`), so the two differ;
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

A table's `Seeds` column gives the number of trial seeds behind its cells; a group whose folds
or trial seeds are fewer than the dataset's others is flagged with `*` and listed under
"Missing folds or seeds". Runs without table.json are incomplete: listed at the end and left out of every number. The
report is printed and written to DIR/results.{txt,md,tex}; `--plots` writes PNGs under
DIR/plots: per dataset and selection method, the per-domain accuracy with error bars of every
group, and per run its training curves (loss, training-domain validation and test accuracy
against step, one line per fold).

DomainBed's own output directories (a sweep of DomainBed's train.py, or of
`python -m domainbed.scripts.train` in its DomainBed form: job directories whose results.jsonl
records carry `args` and `hparams`, domainbed/results/domainbed_runs.py) are read too, and
reported after this project's runs in DomainBed's layout (domainbed/results/domainbed_table.py),
by the same rule code (the pair functions below, selection.py). Where this project's rules and
DomainBed's differ, DomainBed's directories follow DomainBed's:
- ties between hparams candidates go to the highest hparams seed (DomainBed sorts by validation
  accuracy and reverses), not the lowest;
- a method is its algorithm (DomainBed's grouping), whatever its hparams or `--group_by`;
- every record counts, whether its job wrote `done` or not (jobs without it are listed);
- the leave-one-domain-out table is always printed (X without pair folds), and every
  environment of a dataset is a column;
- the averages across datasets take every trial's mean over the domains it has results for,
  not only trials with every domain.
Two departures from DomainBed: a dataset DomainBed does not know is reported (DomainBed drops
it), and a NaN validation accuracy ranks last in both kinds of input (as DomainBed's sort of
hparams; its argmax over checkpoints has no defined answer).

Under every table one line says whether it is the paper's number. `--compare` sets beside each
group the published entries of its method, dataset and selection (domainbed/results/compare.py,
published.yaml), `--paired [BASELINE]` adds paired statistics over shared trial seeds and the
averages table with ranks (domainbed/results/paired.py); see docs/reproducing_a_paper.md.
"""

import argparse
import json
import math
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prettytable import PrettyTable, TableStyle

from domainbed import cli, misc
from domainbed.averaging.extension import strategy_name
from domainbed.hparams.config import run_hparams
from domainbed.errors import UsageError
from domainbed.results import compare, domainbed_runs, domainbed_table, paired, published, selection
from domainbed.results.notes import AVERAGES_NOTE, selection_note, under
from domainbed.runs.reader import Run, find_runs

# Hparams that change how a run is computed, not the method: never part of its group.
RUNTIME_HPARAMS = frozenset({"num_workers", "pipeline", "cache_dir", "compile", "test_batchsize",
                              "progress_interval"})

TRAINING_DOMAIN = "Training-domain validation"
LEAVE_ONE_OUT = "Leave-one-domain-out cross-validation"
ORACLE = "Test-domain validation (DomainBed's oracle: last checkpoint)"


def load_runs(root, group_by=None) -> list:
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; give the output directory of train_all.py or of a sweep")
    runs = [run for run in find_runs(root) if not domainbed_runs.is_domainbed_dir(run.path)]
    for run in runs:
        run.group = method_group(run) if not group_by else keys_group(run, group_by)
    return runs


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _drawn_hparams(algorithm, dataset, hparams_seed, trial_seed):
    """The hparams a run would have had without --key value or extra yaml files, or None when the
    registry cannot rebuild them (an algorithm or dataset this version does not know)."""
    try:
        hparams = json.loads(misc.to_json(run_hparams(algorithm, dataset, hparams_seed, trial_seed)))
    except (KeyError, UsageError):
        return None
    # averaging is part of the method's name even where it is config.yaml's default (SWAD's
    # LossValley): "ERM" is plain ERM, "ERM swad=LossValley" is ERM + SWAD
    hparams["swad"] = NO_AVERAGING
    return hparams


NO_AVERAGING = "False"


def _normalised(key, value):
    """`swad` spelled as the averaging extension reads it (False, off, no ... are no averaging)."""
    if key != "swad":
        return value
    try:
        return strategy_name(value) or NO_AVERAGING
    except UsageError:
        return value


def method_group(run) -> str:
    """The algorithm, then the run's --tag, or without one every method hparam it chose itself."""
    tag = run.args.get("tag") or ""
    if tag:
        return f"{run.algorithm} [{tag}]"
    drawn = _drawn_hparams(run.algorithm, run.registered_dataset, run.hparams_seed, run.trial_seed)
    if drawn is None:
        return run.algorithm
    chosen = [f"{key}={_value(value)}" for key, value in sorted(run.hparams.items())
              if key not in RUNTIME_HPARAMS and drawn.get(key, object()) != _normalised(key, value)]
    return " ".join([run.algorithm, *chosen])


def keys_group(run, keys) -> str:
    """`--group_by`: the named keys' values, from args.json or else hparams.json."""
    parts = []
    for key in keys:
        if key in run.args:
            value = run.args[key]
        elif key in run.hparams:
            value = run.hparams[key]
        else:
            value = None
        parts.append(_value(value) if key == "algorithm" else f"{key}={_value(value)}")
    return " ".join(parts)


def _training_domain(run, fold):
    best = selection.best_training_domain_validation(run.records[fold])
    return best["train_out"], best["test_in"]


def _leave_one_out(run, fold):
    (test_env,) = fold
    pairs = {}
    for pair_fold, records in run.records.items():
        if len(pair_fold) == 2 and test_env in pair_fold:
            pairs[pair_fold[1] if pair_fold[0] == test_env else pair_fold[0]] = records
    return selection.leave_one_domain_out(run.records[fold], pairs)


def _oracle(run, fold):
    # DomainBed's oracle: the last checkpoint, validated on the test domain's held-out split
    last = selection.last_checkpoint(run.records[fold])
    return last["test_out"], last["test_in"]


def _averaged(row):
    def pair(run, fold):
        rows = run.rows[fold]
        return (rows[f"{row} (inD)"], rows[row]) if row in rows and f"{row} (inD)" in rows else None

    return pair


def selection_methods(runs) -> dict:
    """{method name: run_result(run, fold) -> (validation accuracy, test accuracy) or None}."""
    methods = {TRAINING_DOMAIN: _training_domain}
    # only where some run trained pair folds (--pair_folds), lest every table without them gain a column of X
    if any(len(fold) == 2 for run in runs for fold in run.records):
        methods[LEAVE_ONE_OUT] = _leave_one_out
    methods[ORACLE] = _oracle
    averaged = {row for run in runs for rows in run.rows.values() for row in rows
                if row not in selection.ROWS and f"{row} (inD)" in rows}
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
    choices: dict  # (method, dataset, group, trial_seed, fold) -> Choice
    folds: dict  # dataset -> [fold, ...] in order
    names: dict  # (dataset, fold) -> domain name
    domainbed_rules: bool = False  # DomainBed's ties and averages (DomainBed's own directories)

    @property
    def complete(self) -> list:
        return [run for run in self.runs if run.complete]

    @property
    def incomplete(self) -> list:
        return [run for run in self.runs if not run.complete]

    def datasets(self) -> list:
        return sorted(self.folds)

    def groups(self, dataset=None) -> list:
        return sorted({run.group for run in self.complete if dataset in (None, run.dataset)})

    def trial_results(self, method, dataset, group, fold) -> dict:
        """{trial seed: selected test accuracy}."""
        return {key[3]: choice.test for key, choice in self.choices.items()
                if key[:3] == (method, dataset, group) and key[4] == fold}

    def cell(self, method, dataset, group, fold):
        """(mean, standard error) over trial seeds, or None without any."""
        values = list(self.trial_results(method, dataset, group, fold).values())
        return mean_se(values) if values else None

    def dataset_average(self, method, dataset, group):
        """The mean of the domains' means, or None when a domain has no result."""
        cells = [self.cell(method, dataset, group, fold) for fold in self.folds[dataset]]
        return None if None in cells else float(np.mean([c[0] for c in cells]))

    def trial_averages(self, method, dataset, group) -> dict:
        """{trial seed: the trial's mean over the dataset's domains}: only trials with every
        domain, or under DomainBed's rules every trial, over the domains it has a result for."""
        per_fold = [self.trial_results(method, dataset, group, fold) for fold in self.folds[dataset]]
        trials = [set(results) for results in per_fold]
        trials = (set.union if self.domainbed_rules else set.intersection)(*trials) if trials else set()
        return {trial: float(np.mean([results[trial] for results in per_fold if trial in results]))
                for trial in sorted(trials)}

    def summary_cell(self, method, dataset, group):
        """(mean, standard error) over the trials of `trial_averages`."""
        averages = list(self.trial_averages(method, dataset, group).values())
        return mean_se(averages) if averages else None

    def seeds(self, method, dataset, group, fold=None) -> int:
        """The number of trial seeds behind a cell (fold None: behind the dataset's summary cell)."""
        if fold is None:
            return len(self.trial_averages(method, dataset, group))
        return len(self.trial_results(method, dataset, group, fold))

    def missing(self, dataset, group) -> list:
        """What the group lacks that other groups of the dataset have: ['fold B', 'trial seed 2 of fold A']."""
        runs = [run for run in self.complete if run.dataset == dataset]
        all_trials = {run.trial_seed for run in runs}
        lacking = []
        for fold in self.folds[dataset]:
            trials = {run.trial_seed for run in runs if run.group == group and fold in run.rows}
            name = self.names[(dataset, fold)]
            if not trials:
                lacking.append(f"fold {name}")
            elif trials != all_trials:
                seeds = ", ".join(map(str, sorted(all_trials - trials)))
                lacking.append(f"trial seed{'s' if len(all_trials - trials) > 1 else ''} {seeds} of fold {name}")
        return lacking


def ranked(runs, run_result, fold, domainbed_rules=False) -> list:
    """[Choice, ...] of the runs (one trial's hparams candidates) that have a result for `fold`,
    the chosen one first: best validation accuracy; of equals the lowest hparams seed, or under
    DomainBed's rules (its stable sort by validation accuracy, reversed) the highest. A NaN
    validation accuracy ranks last, as DomainBed's sort puts it."""
    candidates = sorted((run for run in runs if fold in run.rows), key=lambda run: (run.hparams_seed, str(run.path)))
    choices = [Choice(run, *pair) for run in candidates if (pair := run_result(run, fold)) is not None]

    def validation(choice):
        return -math.inf if math.isnan(choice.validation) else choice.validation

    if domainbed_rules:
        return sorted(choices, key=validation)[::-1]
    return sorted(choices, key=lambda choice: -validation(choice))


def choose(runs, methods: dict, domainbed_rules=False) -> dict:
    """{(method, dataset, group, trial seed, fold): the chosen Choice} over complete runs."""
    candidates = {}
    for run in runs:
        for fold in run.rows:
            candidates.setdefault((run.dataset, run.group, run.trial_seed, fold), []).append(run)
    choices = {}
    for method, run_result in methods.items():
        for (dataset, group, trial_seed, fold), group_runs in candidates.items():
            best = ranked(group_runs, run_result, fold, domainbed_rules)
            if best:
                choices[(method, dataset, group, trial_seed, fold)] = best[0]
    return choices


def collect(root, group_by=None) -> Results:
    runs = load_runs(root, group_by)
    complete = [run for run in runs if run.complete]
    methods = selection_methods(complete)
    folds, names = {}, {}
    for run in complete:
        for fold in run.rows:
            names[(run.dataset, fold)] = run.names[fold]
            folds.setdefault(run.dataset, set()).add(fold)
    return Results(runs, list(methods), choose(complete, methods), {d: sorted(f) for d, f in folds.items()}, names)


# DomainBed's three selection methods and its names for them, in its order
DOMAINBED_METHODS = {TRAINING_DOMAIN: "training-domain validation set",
                     LEAVE_ONE_OUT: "leave-one-domain-out cross-validation",
                     ORACLE: "test-domain validation set (oracle)"}


def domainbed_methods() -> dict:
    """DomainBed's three selection methods, as `selection_methods` gives them."""
    return {TRAINING_DOMAIN: _training_domain, LEAVE_ONE_OUT: _leave_one_out, ORACLE: _oracle}


def collect_domainbed(sweep: domainbed_runs.Sweep) -> Results:
    """DomainBed's collect_results over the runs of DomainBed's own directories: its three
    selection methods, always (leave-one-domain-out gives X without pair folds), its ties and its
    averages; every environment of a dataset is a column."""
    methods = domainbed_methods()
    folds = {dataset: [(i,) for i in range(len(names))] for dataset, names in sweep.environments.items()}
    names = {(dataset, (i,)): name for dataset, env_names in sweep.environments.items()
             for i, name in enumerate(env_names)}
    return Results(sweep.runs, list(methods), choose(sweep.runs, methods, domainbed_rules=True), folds, names,
                   domainbed_rules=True)


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


def _seeds(counts) -> str:
    """'3', or '1-3' when the cells of a row rest on different numbers of trial seeds."""
    return str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


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
            header = ["Algorithm", *(results.names[(dataset, fold)] for fold in folds), "Avg", "Seeds"]
            rows = []
            for group in results.groups(dataset):
                cells = [_number(results.cell(method, dataset, group, fold), style) for fold in folds]
                seeds = _seeds([results.seeds(method, dataset, group, fold) for fold in folds])
                name = group + (" *" if results.missing(dataset, group) else "")
                rows.append([name, *cells, _number(results.dataset_average(method, dataset, group), style), seeds])
            parts.append(under(_render(dataset, header, rows, style), selection_note(method), style))
        datasets = results.datasets()
        rows = []
        for group in results.groups():
            cells = [results.summary_cell(method, dataset, group) for dataset in datasets]
            average = None if None in cells else float(np.mean([c[0] for c in cells]))
            seeds = _seeds([results.seeds(method, dataset, group) for dataset in datasets])
            rows.append([group, *(_number(c, style) for c in cells), _number(average, style), seeds])
        parts.append(under(_render("Averages over datasets", ["Algorithm", *datasets, "Avg", "Seeds"], rows, style),
                           selection_note(method) + " " + AVERAGES_NOTE, style))
    gaps = [f"  {dataset} {group}: no {', no '.join(lacking)}" for dataset in results.datasets()
            for group in results.groups(dataset) if (lacking := results.missing(dataset, group))]
    if gaps:
        parts.append(_heading("Missing folds or seeds", style) + "\n"
                     + "Groups marked * lack results that other groups of their dataset have:\n" + "\n".join(gaps))
    incomplete = results.incomplete
    if incomplete:
        lines = [f"Incomplete runs, left out of every number above ({len(incomplete)}):"]
        for run in incomplete:
            progress = ", ".join(f"TE{','.join(map(str, fold))} at step {records[-1]['step']}"
                                 for fold, records in sorted(run.records.items())) or "no records yet"
            lines.append(f"  {run.path}: {run.dataset} {run.group} hparams_seed {run.hparams_seed} "
                         f"trial_seed {run.trial_seed} ({progress})")
        parts.append(_heading("Incomplete runs", style) + "\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


def format_domainbed_report(results: Results, sweep, style: str = "text") -> str:
    """The report of DomainBed's own directories: DomainBed's layout (text or LaTeX); Markdown
    has none in DomainBed, so this project's Markdown tables hold the same numbers."""
    if style == "markdown":
        return format_report(results, style)
    return domainbed_table.format_report(results, DOMAINBED_METHODS, sweep.n_records, style == "latex",
                                         sweep.unfinished)


# Plots


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


# Group names wrap at this many characters: real ones ("SAGM_DG swad=LossValley lr=3e-05 ...") are
# long, and a name on one line would take the width the panels need.
LABEL_CHARACTERS = 44


def _wrapped(text: str) -> str:
    return textwrap.fill(text, LABEL_CHARACTERS, break_long_words=False, break_on_hyphens=False)


def plot_accuracies(results: Results, method: str, dataset: str, path: Path):
    """One panel per test domain and the average, one row per method group in every panel (its
    name once, at the left, as in the table), a horizontal bar of the mean over trial seeds with
    its standard error and its value. Rows keep their height whatever the number of groups, so the
    figure grows downwards with them and no name or value lands on another. Returns the Figure."""
    from matplotlib.figure import Figure

    folds = results.folds[dataset]
    groups = results.groups(dataset)
    labels = [_wrapped(f"{group} (n={results.seeds(method, dataset, group)})") for group in groups]
    lines_per_label = max((label.count("\n") + 1 for label in labels), default=1)
    row_inches = 0.15 * lines_per_label + 0.12
    figure = Figure(figsize=(3.4 + 1.8 * (len(folds) + 1), 1.3 + row_inches * max(1, len(groups))),
                    layout="constrained")
    panels = figure.subplots(1, len(folds) + 1, sharey=True, squeeze=False)[0]
    rows = np.arange(len(groups))
    for axes, fold in zip(panels, [*folds, None]):
        if fold is not None:
            cells = [results.cell(method, dataset, group, fold) for group in groups]
            means = np.array([100 * c[0] if c else np.nan for c in cells])
            errors = np.array([100 * c[1] if c else np.nan for c in cells])
            title, color = results.names[(dataset, fold)], "#9ecae1"
        else:  # the mean of the domains' means, without an error bar, as DomainBed
            averages = [results.dataset_average(method, dataset, group) for group in groups]
            means = np.array([100 * a if a is not None else np.nan for a in averages])
            errors = np.full(len(groups), np.nan)
            title, color = "Avg", "#fdae6b"
        for row in rows[1::2]:  # bands lead the eye along a row across the panels
            axes.axhspan(row - 0.5, row + 0.5, color="0.94", zorder=0)
        axes.barh(rows, means, height=0.7, xerr=errors, color=color, ecolor="0.2", capsize=2, zorder=2)
        for row, mean in zip(rows, means):
            # at the bar's foot, so a value never meets an error bar or the next panel
            axes.annotate("X" if np.isnan(mean) else f"{mean:.1f}", (0, row), xytext=(3, 0),
                          textcoords="offset points", va="center", fontsize=7, zorder=3)
        axes.set_title(title, fontsize=9)
        axes.set_xlim(0, 105)
        axes.set_xticks(range(0, 101, 25))
        axes.tick_params(labelsize=8)
        axes.grid(axis="x", alpha=0.3)
    panels[0].set_yticks(rows, labels, fontsize=8)
    panels[0].set_ylim(len(groups) - 0.5, -0.5)  # the first group on top, as in the table
    figure.suptitle(f"{dataset}: {method}", fontsize=10)
    figure.supxlabel("test-domain accuracy (%), mean ± SE over trial seeds (n: trial seeds)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return figure


def plot_curves(run: Run, path: Path) -> None:
    """Loss and accuracies against step, one colour per fold; markers on the evaluated steps."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for fold, records in sorted(run.records.items()):
        label = run.names.get(fold, "TE" + ",".join(map(str, fold)))
        steps = [record["step"] for record in records]
        if "loss" in records[0]:
            loss_axes.plot(steps, [record["loss"] for record in records], marker="o", markersize=3, label=label)
        line, = accuracy_axes.plot(steps, [100 * record["test_in"] for record in records], marker="o",
                                   markersize=3, label=label)
        accuracy_axes.plot(steps, [100 * record["train_out"] for record in records], linestyle="--", marker="s",
                           markersize=3, color=line.get_color())
    loss_axes.set(xlabel="step", ylabel="training loss", title="training loss")
    accuracy_axes.set(xlabel="step", ylabel="accuracy (%)",
                      title="accuracy: test domain (solid), training-domain validation (dashed)")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
    accuracy_axes.legend(title="test domain", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.suptitle(f"{run.path.name}: {run.dataset} {run.group}, hparams_seed {run.hparams_seed}, "
                    f"trial_seed {run.trial_seed}", fontsize=10)
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


EXAMPLE = """example:
  python -m domainbed.scripts.collect_results sweeps/main --markdown --plots
  python -m domainbed.scripts.collect_results --input_dir sweeps/main --group_by algorithm swad
  python -m domainbed.scripts.collect_results sweeps/main --compare --paired ERM --effect 0.5
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Model selection over hparams and DomainBed-style tables of many runs, grouped by method",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("directory", nargs="?", help="a train_all.py output directory or a sweep's")
    parser.add_argument("--input_dir", help="the same, in DomainBed's spelling")
    style = parser.add_mutually_exclusive_group()
    style.add_argument("--markdown", action="store_true", help="Markdown tables")
    style.add_argument("--latex", action="store_true", help="LaTeX tables")
    parser.add_argument("--plots", action="store_true", help="write PNGs under INPUT_DIR/plots")
    parser.add_argument("--group_by", nargs="+", metavar="KEY", default=None,
                        help="group runs by these keys of args.json or hparams.json (e.g. algorithm swad tag) "
                             "instead of by method")
    parser.add_argument("--compare", action="store_true",
                        help="beside each group, the published entry of its method, dataset and selection "
                             "(gap, noise test, protocol differences)")
    parser.add_argument("--published", metavar="FILE", default=None,
                        help="published results for --compare (default: the packaged domainbed/results/published.yaml)")
    parser.add_argument("--paired", nargs="?", const="", default=None, metavar="BASELINE",
                        help="paired statistics of every group against BASELINE (default: ERM, else the first group) "
                             "over shared trial seeds, and the averages table with ranks")
    parser.add_argument("--effect", type=float, default=1.0, metavar="POINTS",
                        help="with --paired: the difference (accuracy points) whose seeds-needed column is given")
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)

    def work():
        if (args.directory is None) == (args.input_dir is None):
            raise UsageError("give the runs' directory once: positionally or as --input_dir DIR")
        if args.published is not None and not args.compare:
            raise UsageError("--published is the file --compare reads: add --compare")
        if args.effect <= 0:
            raise UsageError(f"--effect {args.effect:g}: give a difference in accuracy points above 0, e.g. 1")
        entries = published.load(args.published) if args.compare else None
        root = Path(args.directory or args.input_dir)
        style = "latex" if args.latex else "markdown" if args.markdown else "text"
        results = collect(root, args.group_by)
        sweep = domainbed_runs.read_sweep(root)
        reports = []
        if results.runs or not sweep.runs:
            report = format_report(results, style)
            if args.compare:
                report += "\n" + compare.format_compare(results, entries, style)
            if args.paired is not None:
                if args.paired and args.paired not in results.groups():
                    raise UsageError(f"--paired {args.paired!r} is no group; valid: {', '.join(results.groups())}")
                report += "\n" + paired.format_paired(results, args.paired or None, args.effect, style)
            reports.append(report)
        domainbed_results = collect_domainbed(sweep) if sweep.runs else None
        if domainbed_results is not None:
            reports.append(format_domainbed_report(domainbed_results, sweep, style))
        report = "\n".join(reports)
        print(report, end="")
        suffix = {"text": "txt", "markdown": "md", "latex": "tex"}[style]
        misc.atomic_write_text(root / f"results.{suffix}", report)
        if args.plots:
            paths = [*write_plots(results, root, root / "plots"),
                     *(write_plots(domainbed_results, root, root / "plots") if domainbed_results else [])]
            print(f"wrote {len(paths)} plots under {root / 'plots'}")

    return cli.run_main(work, "interrupted: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
