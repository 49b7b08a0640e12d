"""DiWA: the weight average of the runs of a sweep that share an initialisation, scored on the
held-out domain (Ramé et al., "Diverse Weight Averaging for Out-of-Distribution Generalization",
NeurIPS 2022; docs/diwa.md).

    python -m domainbed.scripts.diwa SWEEP_DIR [SWEEP_DIR ...] [--selection uniform|greedy]
        [--checkpoint best|final] [--dataset NAME] [--algorithm NAME] [--trial_seed N]
        [--test_envs I ...] [--data_dir DIR] [--bn_steps N] [--output FILE]

Reads every run under the directories (train_all.py's run directories at any depth, as
collect_results; `--input_dir` is DomainBed's spelling), keeps those of `--dataset`,
`--algorithm` and `--trial_seed` when given, and for each dataset and held-out domain averages
the weights of every run with a finished fold for that domain:

- `--checkpoint best` (DiWA's): each run's checkpoint of best training-domain validation accuracy,
  which train_all.py keeps with `--keep_best`; `final`: the fold's final model (the last step's,
  or the fold's average with `--swad`).
- `--selection uniform`: every run (DiWA's uniform; with runs of every trial seed, DiWA-dagger).
  `greedy`: DiWA's restricted selection (domainbed/averaging/diwa.py), which scores averages on the
  training-domain validation split, so the runs must share one trial seed (`--trial_seed N`):
  another trial's runs trained on part of that split.
- Averaging weights needs a shared initialisation: every fold records a fingerprint of the weights
  it started from (domainbed/training/initialization.py), and runs whose fingerprints differ are
  refused, named, before any model is evaluated. A sweep shares one by `-- --init_path LP_RUN`.

Evaluation is the ensemble tool's (domainbed/scripts/ensemble.py): the splits are rebuilt from the
first run's (in path order) data_dir, trial seed and holdout fraction; the test-domain accuracy is
over the whole held-out environment (its in and out splits, as DiWA's and EoA's code score it);
the in-domain accuracy is the training-domain validation accuracy (`train_out`). Every run is
evaluated too, which gives the rows `Best run` (the run of best training-domain validation
accuracy: DomainBed's training-domain validation selection among the averaged runs) and `Mean of
runs`. When the network updates BatchNorm statistics in training (`freeze_bn False` or no
pretrained weights), every average's are re-estimated on `--bn_steps` training minibatches before
it is evaluated, as SWAD does; with DiWA's frozen BatchNorm nothing is (the runs share the
statistics). The tables are printed and written with the selections to `--output` (default
DIR/diwa_<selection>_<checkpoint>[_trial<N>].json in the first directory), atomically.
"""

import contextlib
import sys
from pathlib import Path

from tqdm import tqdm

from domainbed import cli, misc
from domainbed.averaging.batchnorm import update_bn, updates_batchnorm_statistics
from domainbed.averaging.diwa import ParameterMean, greedy_average
from domainbed.data import num_workers_for
from domainbed.errors import UsageError
from domainbed.results import report
from domainbed.runs import checkpoint, layout, model_io
from domainbed.runs.reader import distinct_names, find_runs, read_trained_run
from domainbed.runs.run_data import build_dataset, eval_splits, train_minibatches, whole_domain_accuracy
from domainbed.training.evaluator import Evaluator
from domainbed.training.trainer import resolve_device

SELECTIONS = ("uniform", "greedy")
CHECKPOINTS = ("best", "final")
BEST_RUN, MEAN_OF_RUNS = "Best run", "Mean of runs"
RULES = {
    "uniform": "the uniform average of the weights of every run (DiWA uniform)",
    "greedy": "the weight average of the runs kept by DiWA's restricted selection: ranked by their "
              "training-domain validation accuracy, each kept if the average's does not drop",
    BEST_RUN: "the run of best training-domain validation accuracy (DomainBed's training-domain validation)",
    MEAN_OF_RUNS: "the mean over the runs",
}


def find_members(paths, dataset=None, algorithm=None, trial_seed=None) -> list:
    """The runs under `paths` with at least one finished fold, of the given dataset, algorithm and
    trial seed, in path order, each named distinctly."""
    found = {}
    for path in paths:
        if not Path(path).is_dir():
            raise UsageError(f"directory {path} does not exist")
        for run in find_runs(path):
            found.setdefault(run.path.resolve(), run)
    runs = [run for _, run in sorted(found.items())]
    if not runs:
        raise UsageError(f"no run directories (holding {layout.ARGS}) under {', '.join(map(str, paths))}")
    chosen = [run for run in runs if run.models
              and dataset in (None, run.registered_dataset, run.dataset)
              and algorithm in (None, run.algorithm)
              and trial_seed in (None, run.trial_seed)]
    if not chosen:
        seen = sorted({(run.dataset, run.algorithm, run.trial_seed) for run in runs if run.models})
        raise UsageError(f"no finished run of dataset {dataset or 'any'}, algorithm {algorithm or 'any'}, trial seed "
                         f"{'any' if trial_seed is None else trial_seed}; finished runs: "
                         + ("; ".join(f"{d} {a} trial {t}" for d, a, t in seen) or "none"))
    return distinct_names([read_trained_run(run.path) for run in chosen])


def model_file(run, test_env: int, which: str) -> Path:
    """The weights of `run`'s fold `test_env` that DiWA averages: its `best` kept checkpoint or `final` model."""
    if which == "final":
        return run.models[test_env]
    step = checkpoint.best_step(run.records.get((test_env,), []))
    path = None if step is None else layout.checkpoint_path(run.path, [test_env], step)
    if path is None or not path.is_file():
        raise UsageError(f"{run.name} kept no checkpoint of best validation accuracy for TE{test_env}"
                         f"{'' if path is None else f' ({path.name})'}: train with --keep_best, or pass --checkpoint final")
    return path


def check_shared_init(runs, metas, test_env: int) -> None:
    """One line naming the runs, grouped by initial weights, when they did not all start from the same."""
    groups = {}
    for run, meta in zip(runs, metas):
        groups.setdefault(meta.get("initial_weights"), []).append(run.name)
    if None in groups:
        raise UsageError(f"TE{test_env}: {', '.join(groups[None])} recorded no fingerprint of its initial weights "
                         "(trained by an older version), so a shared initialisation cannot be checked")
    if len(groups) > 1:
        described = "; ".join(f"{', '.join(names)} started from {digest[:12]}" for digest, names in groups.items())
        raise UsageError(f"TE{test_env}: the runs did not start from the same weights, which averaging needs: "
                         f"{described}; train them from one --init_path (docs/diwa.md)")


def refresh_batchnorm(average, minibatches, n_steps: int) -> bool:
    """Re-estimate the BatchNorm statistics of `average` on `n_steps` minibatches of the stream
    `minibatches()` opens, when its network updates them in training; whether it did."""
    if not n_steps or not updates_batchnorm_statistics(average):
        return False
    with contextlib.closing(minibatches()) as stream:
        update_bn(average, stream, n_steps)
    return True


class FoldRuns:
    """One held-out domain of a dataset: its runs' weights, the evaluators, the BatchNorm refresh."""

    def __init__(self, runs, test_env, which, dataset, device, batch_size, num_workers, bn_steps, log):
        self.runs, self.test_env, self.device, self.log = runs, test_env, device, log
        self.files = {run.name: model_file(run, test_env, which) for run in runs}
        metas = [model_io.read_meta(self.files[run.name]) for run in runs]
        model_io.check_members(runs, metas)
        check_shared_init(runs, metas, test_env)
        algorithms = sorted({meta["algorithm"] for meta in metas})
        if len(algorithms) > 1:
            log(f"TE{test_env}: note: the runs are of {', '.join(algorithms)}; the average predicts as "
                f"{metas[0]['algorithm']} ({runs[0].name})")
        reference = runs[0]
        splits = eval_splits(reference, dataset, test_env)
        batch_size = batch_size or reference.hparams.get("test_batchsize", 256)
        workers = num_workers_for(num_workers, dataset.N_WORKERS, 1)
        self.evaluator = Evaluator(splits, [test_env], batch_size, workers, device, "fast")
        self.validator = Evaluator([s for s in splits if s.train_domain is not None], [test_env], batch_size,
                                   workers, device, "fast")
        self.minibatches = lambda: train_minibatches(reference, dataset, test_env, device)
        self.bn_steps = bn_steps
        self._bn_said = False

    def load(self, name):
        return model_io.load_model(self.files[name], self.device)[0]

    def evaluate(self, model) -> tuple:
        """(whole held-out domain accuracy, training-domain validation accuracy)."""
        accuracies, _, summaries = self.evaluator.evaluate(model)
        return whole_domain_accuracy(self.evaluator, accuracies, self.test_env), summaries["train_out"]

    def refresh_batchnorm(self, average) -> None:
        if refresh_batchnorm(average, self.minibatches, self.bn_steps) and not self._bn_said:
            self.log(f"TE{self.test_env}: the network updates BatchNorm statistics in training: each average's are "
                     f"re-estimated on {self.bn_steps} training minibatches")
            self._bn_said = True

    def validation_accuracy(self, average) -> float:
        self.refresh_batchnorm(average)
        return self.validator.evaluate(average)[2]["train_out"]


def average_fold(fold: FoldRuns, selection: str) -> dict:
    """Evaluate every run and the average `selection` picks; returns the fold's numbers."""
    scores, mean = {}, ParameterMean()
    for run in tqdm(fold.runs, desc=f"TE{fold.test_env}: evaluating runs", unit="run", disable=None, leave=False):
        model = fold.load(run.name)
        scores[run.name] = fold.evaluate(model)
        fold.log(f"TE{fold.test_env} {run.name}: {fold.files[run.name]}: test {100 * scores[run.name][0]:.2f}%, "
                 f"in-domain {100 * scores[run.name][1]:.2f}%")
        if selection == "uniform":
            mean.add(model, run.name)
        del model
    ranked = sorted(scores, key=lambda name: -scores[name][1])  # stable: path order on ties
    if selection == "uniform":
        average, kept = mean.average(), [run.name for run in fold.runs]
    else:
        average, kept, _ = greedy_average(ranked, fold.load, fold.validation_accuracy,
                                          log=lambda line: fold.log(f"TE{fold.test_env} {line}"))
    fold.refresh_batchnorm(average)
    test, validation = fold.evaluate(average)
    row = f"DiWA ({selection})"
    fold.log(f"TE{fold.test_env} {row} of {len(kept)} runs: test {100 * test:.2f}%, in-domain {100 * validation:.2f}%")
    best = ranked[0]
    return {
        "test": {row: test, BEST_RUN: scores[best][0], MEAN_OF_RUNS: sum(s[0] for s in scores.values()) / len(scores)},
        "inD": {row: validation, BEST_RUN: scores[best][1],
                MEAN_OF_RUNS: sum(s[1] for s in scores.values()) / len(scores)},
        "runs": {name: {"file": str(fold.files[name]), "test": scores[name][0], "inD": scores[name][1]}
                 for name in scores},
        "averaged": kept, "best_run": best,
    }


def diwa_dataset(runs, selection, which, test_envs, data_dir, device, batch_size, num_workers, bn_steps, log) -> dict:
    """DiWA on each held-out domain of one dataset's `runs`."""
    folds = sorted(set.union(*(set(run.models) for run in runs)))
    if test_envs is not None:
        missing = sorted(set(test_envs) - set(folds))
        if missing:
            raise UsageError(f"--test_envs {missing}: no run has a finished fold for them; finished: {folds}")
        folds = sorted(set(test_envs))
    seeds = sorted({run.trial_seed for run in runs})
    if selection == "greedy" and len(seeds) > 1:
        raise UsageError(f"greedy selection scores averages on the training-domain validation split, which differs "
                         f"between trial seeds (found {', '.join(map(str, seeds))}): pass --trial_seed N")
    if len(seeds) > 1:
        log(f"note: trial seeds differ ({', '.join(map(str, seeds))}); the splits are those of {runs[0].name}, so "
            "the in-domain accuracy of runs of other trial seeds is optimistic")
    dataset = build_dataset(runs[0], data_dir)
    rows = {"test": [], "inD": []}
    details = {}
    for test_env in folds:
        members = [run for run in runs if test_env in run.models]
        fold = FoldRuns(members, test_env, which, dataset, device, batch_size, num_workers, bn_steps, log)
        result = average_fold(fold, selection)
        rows["test"].append(result.pop("test"))
        rows["inD"].append(result.pop("inD"))
        details[f"TE{test_env}"] = result
    environments = [dataset.environments[env] for env in folds]
    rules = {f"DiWA ({selection})": RULES[selection], BEST_RUN: RULES[BEST_RUN], MEAN_OF_RUNS: RULES[MEAN_OF_RUNS]}
    tables = {key: report.build_table(rows[key], environments) for key in rows}
    log(f"{runs[0].dataset}, {len(runs)} runs, {which} checkpoints:")
    log("Test-domain accuracy (the whole held-out environment, as DiWA):")
    log(report.format_table(tables["test"], environments, rules))
    log("In-domain accuracy (training-domain validation, train_out):")
    log(report.format_table(tables["inD"], environments, rules))
    return {"dataset": runs[0].dataset, "environments": environments, "test_envs": folds,
            "runs": [run.name for run in runs], "folds": details, **tables}


def diwa(paths, selection="uniform", which="best", dataset=None, algorithm=None, trial_seed=None, test_envs=None,
         data_dir=None, device="auto", num_workers=-1, batch_size=None, bn_steps=500, log=print) -> dict:
    """DiWA over the runs under `paths`, per dataset and held-out domain; returns the tables."""
    if selection not in SELECTIONS:
        raise UsageError(f"unknown --selection {selection!r}; valid: {', '.join(SELECTIONS)}")
    if which not in CHECKPOINTS:
        raise UsageError(f"unknown --checkpoint {which!r}; valid: {', '.join(CHECKPOINTS)}")
    if bn_steps < 0:
        raise UsageError(f"--bn_steps {bn_steps} is negative; give 0 (never) or a number of minibatches")
    runs = find_members(paths, dataset, algorithm, trial_seed)
    device = resolve_device(device)
    by_dataset = {}
    for run in runs:
        by_dataset.setdefault(run.registered_dataset, []).append(run)
    results = [diwa_dataset(group, selection, which, test_envs, data_dir, device, batch_size, num_workers, bn_steps,
                            log) for group in by_dataset.values()]
    return {"selection": selection, "checkpoint": which, "trial_seed": trial_seed, "datasets": results}


def default_output(directory, selection: str, which: str, trial_seed) -> Path:
    trial = "" if trial_seed is None else f"_trial{trial_seed}"
    return Path(directory) / f"diwa_{selection}_{which}{trial}.json"


def main(argv=None) -> int:
    parser = cli.parser("DiWA: average the weights of a sweep's runs that share an initialisation and score "
                        "the average on each held-out domain",
                        "python -m domainbed.scripts.diwa sweeps/diwa_pacs --selection greedy --trial_seed 0")
    parser.add_argument("directories", nargs="*", help="sweep or run directories (runs at any depth)")
    parser.add_argument("--input_dir", action="append", default=[], help="the same, in DomainBed's spelling")
    parser.add_argument("--selection", default="uniform", metavar="{" + ",".join(SELECTIONS) + "}",
                        help="uniform: every run; greedy: DiWA's restricted selection (default: %(default)s)")
    parser.add_argument("--checkpoint", default="best", metavar="{" + ",".join(CHECKPOINTS) + "}",
                        help="best: each run's checkpoint of best training-domain validation accuracy (DiWA's; "
                             "train with --keep_best); final: its final model (default: %(default)s)")
    parser.add_argument("--dataset", default=None, help="only the runs of this dataset")
    parser.add_argument("--algorithm", default=None, help="only the runs of this algorithm")
    parser.add_argument("--trial_seed", type=int, default=None,
                        help="only the runs of this trial seed (default: every one, DiWA-dagger)")
    parser.add_argument("--test_envs", "--test_env", type=int, nargs="+", default=None,
                        help="held-out domains (default: every one some run finished)")
    parser.add_argument("--data_dir", default=None, help="where the data is now (default: each dataset's first run's)")
    parser.add_argument("--bn_steps", type=int, default=500,
                        help="training minibatches that re-estimate an average's BatchNorm statistics when the "
                             "network updates them in training; 0: never (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--num_workers", type=int, default=-1,
                        help="evaluation loader workers; -1 sizes them to the machine")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="evaluation batch size (default: the run's test_batchsize)")
    parser.add_argument("--output", default=None,
                        help="the JSON file of the results (default: DIR/diwa_<selection>_<checkpoint>[_trial<N>].json)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def work():
        directories = args.directories + args.input_dir
        if not directories:
            raise UsageError("give a sweep or run directory (or --input_dir DIR)")
        result = diwa(directories, args.selection, args.checkpoint, args.dataset, args.algorithm, args.trial_seed,
                      args.test_envs, args.data_dir, args.device, args.num_workers, args.batch_size, args.bn_steps)
        output = Path(args.output or default_output(directories[0], args.selection, args.checkpoint, args.trial_seed))
        try:
            misc.atomic_write_text(output, misc.to_json(result, indent=2))
        except OSError as error:
            raise UsageError(f"cannot write {output}: {error.strerror or error}") from None
        print(f"results: {output}")

    return cli.run_main(work, "interrupted: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
