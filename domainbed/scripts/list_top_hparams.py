"""The hparams candidates of one (dataset, algorithm, test environment), best first, per trial
seed and selection method: DomainBed's list_top_hparams.

    python -m domainbed.scripts.list_top_hparams --input_dir DIR --dataset VLCS --algorithm ERM --test_env 0

Reads this project's runs and DomainBed's own job directories under DIR, as collect_results
does, and ranks them with collect_results' selection methods and ranking (`collect_results.ranked`:
best validation accuracy first; equals in the order collect_results chooses between them, the
highest hparams seed first for DomainBed's directories and the lowest for this project's runs).
For each candidate it prints, as DomainBed, its validation and test accuracy, its hparams and
its output directories; this project's runs also name their method group (collect_results' rows),
since one algorithm may have several. Runs of this project without table.json (unfinished) are
left out, as in collect_results. Where DomainBed follows the order in which the file system lists
the job directories (trial seeds, output directories), we sort; accuracies print as plain numbers.
"""

import argparse
import sys
from pathlib import Path

from domainbed import cli
from domainbed.errors import UsageError
from domainbed.results import domainbed_runs
from domainbed.scripts import collect_results as cr

EXAMPLE = """example:
  python -m domainbed.scripts.list_top_hparams --input_dir sweeps/vlcs --dataset VLCS --algorithm ERM --test_env 0
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The hparams candidates of one test environment, best first",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--input_dir", required=True, help="a sweep's output directory (this project's or DomainBed's)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algorithm", required=True)
    parser.add_argument("--test_env", type=int, required=True, help="the test environment's index")
    return parser


def _choose(values, what, valid):
    if values not in valid:
        raise UsageError(f"no runs of {what} {values!r} in the input; present: {', '.join(map(str, sorted(valid))) or 'none'}")


def candidates(root, dataset, algorithm, test_env):
    """([(runs, methods, domainbed_rules, output_dirs(run, test_env))], DomainBed's number of records): this
    project's runs and DomainBed's directories under `root` that have `dataset` and `algorithm`;
    a one-line error naming what the input has when nothing matches."""
    ours = [run for run in cr.load_runs(root) if run.complete]
    sweep = domainbed_runs.read_sweep(root)
    everything = ours + sweep.runs
    _choose(dataset, "dataset", {run.dataset for run in everything} | {run.registered_dataset for run in everything})
    everything = [run for run in everything if dataset in (run.dataset, run.registered_dataset)]
    _choose(algorithm, "algorithm", {run.algorithm for run in everything})
    everything = [run for run in everything if run.algorithm == algorithm]
    _choose(test_env, "test environment", {fold[0] for run in everything for fold in run.rows})
    kept = {id(run) for run in everything}
    sets = []
    ours = [run for run in ours if id(run) in kept]
    if ours:
        sets.append((ours, cr.selection_methods(ours), False, lambda run, test_env: [run.path]))
    theirs = [run for run in sweep.runs if id(run) in kept]
    if theirs:
        sets.append((theirs, cr.domainbed_methods(), True, sweep.output_dirs))
    return sets, sweep.n_records


def listing(root, dataset, algorithm, test_env) -> str:
    sets, n_records = candidates(root, dataset, algorithm, test_env)
    lines = [f"Total records: {n_records}"] if any(domainbed_rules for _, _, domainbed_rules, _ in sets) else []
    fold = (test_env,)
    for runs, methods, domainbed_rules, output_dirs in sets:
        for method, run_result in methods.items():
            lines.append(f"Model selection: {cr.DOMAINBED_METHODS.get(method, method)}")
            for trial_seed in sorted({run.trial_seed for run in runs}):
                lines.append(f"trial_seed: {trial_seed}")
                trial_runs = [run for run in runs if run.trial_seed == trial_seed]
                for choice in cr.ranked(trial_runs, run_result, fold, domainbed_rules):
                    lines.append(f"\t{{'val_acc': {choice.validation!r}, 'test_acc': {choice.test!r}}}")
                    if not domainbed_rules:
                        lines.append(f"\t\tmethod: {choice.run.group}")
                    lines.append("\t\thparams:")
                    lines += [f"\t\t\t{key}: {value}" for key, value in sorted(choice.run.hparams.items())]
                    lines.append("\t\toutput_dirs:")
                    lines += [f"\t\t\t{path}" for path in output_dirs(choice.run, test_env)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)

    def work():
        root = Path(args.input_dir)
        if not root.is_dir():
            raise UsageError(f"{root} is not a directory; give a sweep's output directory")
        print(listing(root, args.dataset, args.algorithm, args.test_env), end="")

    return cli.run_main(work, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
