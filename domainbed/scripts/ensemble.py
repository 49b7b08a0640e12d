"""Ensembles of runs: the sum of the logits of several runs' final models, per test domain.

    python -m domainbed.scripts.ensemble RUN_DIR [RUN_DIR ...] [--data_dir DIR] [--output FILE]

Every RUN_DIR is a directory train_all.py wrote (args.json, hparams.json, models/TE{i}_final.pth)
for the same dataset: other trial seeds, seeds or hparams. For each test domain that every run
trained a fold for, the members' final models (the averaged ones where averaging was on) are
loaded, their logits summed, and the ensemble and every member are evaluated on the same splits,
rebuilt as the trainer builds them from the *first* run's data_dir, trial_seed and
holdout_fraction. The tables give the test-domain accuracy over the whole held-out environment
(its in and out splits together, as EoA's code scores it; the SWAD rows of a run's own table read
its in split only) and the training-domain validation accuracy (in-domain). It prints the model
file of every member. An ensemble of SMA runs (each fold's best-validation SMA model) is EoA
(Arpit et al., NeurIPS 2022); of quantized runs, EoQ (QT-DoG).

Members whose trial seed differs from the first run's were trained on part of the first run's
training-domain validation split, so their in-domain numbers are optimistic (the tool says so);
the test domain is never trained on, so the test-domain numbers are fair. The logits are summed in
float64 in an order fixed by the run directories' paths, so the result does not depend on the
order of the arguments.
"""

import sys

import torch.nn as nn
from tqdm import tqdm

from domainbed import cli, misc
from domainbed.runs import model_io
from domainbed.runs.reader import distinct_names, read_trained_run
from domainbed.runs.run_data import build_dataset, eval_splits, whole_domain_accuracy
from domainbed.results import report
from domainbed.data import num_workers_for
from domainbed.errors import UsageError
from domainbed.training.evaluator import Evaluator
from domainbed.training.trainer import resolve_device


def read_runs(paths) -> list:
    runs = distinct_names([read_trained_run(path) for path in paths])
    for run in runs[1:]:
        if run.args["dataset"] != runs[0].args["dataset"]:
            raise UsageError(f"runs disagree on the dataset: {runs[0].name} is {runs[0].args['dataset']}, "
                             f"{run.name} is {run.args['dataset']}")
    return runs


class LogitSum(nn.Module):
    """Predicts the sum of the members' logits (in float64, members in a fixed order)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def predict(self, x, env=None):
        return sum(member.predict(x, env=env).double() for member in self.members)

    def forward(self, x):
        return self.predict(x)


def ensemble(paths, data_dir=None, device="auto", num_workers=-1, batch_size=None, test_envs=None,
             log=print) -> dict:
    """Evaluate the ensemble of the runs in `paths` and each member on the test domains they share
    (those of them in `test_envs` when given); returns the tables."""
    runs = read_runs(paths)
    device = resolve_device(device)
    common = sorted(set.intersection(*(set(run.models) for run in runs)))
    if test_envs is not None:
        missing = sorted(set(test_envs) - set(common))
        if missing:
            raise UsageError(f"--test_envs {missing}: not every run has a final model for them; shared: {common}")
        common = sorted(set(test_envs))
    if not common:
        raise UsageError("the runs share no test domain: " + "; ".join(
            f"{run.name} has folds TE{', TE'.join(map(str, sorted(run.models)))}" for run in runs))
    skipped = sorted(set.union(*(set(run.models) for run in runs)) - set(common))
    if skipped and test_envs is None:
        log(f"skipping test domains {skipped}: not every run has a final model for them")
    seeds = {run.name: run.args["trial_seed"] for run in runs}
    if len(set(seeds.values())) > 1:
        log(f"note: trial seeds differ ({seeds}); the splits are those of {runs[0].name}, so other members' "
            "in-domain accuracy is optimistic (their training data overlaps its validation split)")
    dataset = build_dataset(runs[0], data_dir)
    order = sorted(range(len(runs)), key=lambda i: str(runs[i].path.resolve()))
    ensemble_row = f"Ensemble ({len(runs)} runs)"
    test_rows, ind_rows = [], []
    for test_env in common:
        model_io.check_members(runs, [model_io.read_meta(run.models[test_env]) for run in runs])
        loaded = [model_io.load_model(run.models[test_env], device) for run in runs]
        evaluator = Evaluator(eval_splits(runs[0], dataset, test_env), [test_env],
                              batch_size or runs[0].hparams.get("test_batchsize", 256),
                              num_workers_for(num_workers, dataset.N_WORKERS, 1), device, "fast")
        test, ind = {}, {}
        candidates = [(run.name, model) for run, (model, _) in zip(runs, loaded)]
        candidates.append((ensemble_row, LogitSum([loaded[i][0] for i in order]).to(device)))
        for run in runs:
            log(f"TE{test_env} {run.name}: {run.models[test_env]}")
        for name, model in tqdm(candidates, desc=f"TE{test_env}: evaluating models", unit="model", disable=None,
                                leave=False):
            accuracies, _, summaries = evaluator.evaluate(model)
            test[name] = whole_domain_accuracy(evaluator, accuracies, test_env)  # EoA's protocol
            ind[name] = summaries["train_out"]
            log(f"TE{test_env} {name}: test {100 * test[name]:.2f}%, in-domain {100 * ind[name]:.2f}%")
        test_rows.append(test)
        ind_rows.append(ind)
        del loaded, candidates

    environments = [dataset.environments[env] for env in common]
    rules = {ensemble_row: "sum of the members' logits"}
    tables = {"test": report.build_table(test_rows, environments), "inD": report.build_table(ind_rows, environments)}
    log("Test-domain accuracy (the whole held-out environment, as EoA):")
    log(report.format_table(tables["test"], environments, rules))
    log("In-domain accuracy (training-domain validation, train_out):")
    log(report.format_table(tables["inD"], environments, rules))
    return {"dataset": runs[0].args["dataset"], "environments": environments, "test_envs": common,
            "members": [run.name for run in runs], "ensemble": ensemble_row, **tables}


def main(argv=None) -> int:
    parser = cli.parser("Ensemble the final models of several runs (sum of logits)",
                        "python -m domainbed.scripts.ensemble train_output/PACS/*_erm_t0 train_output/PACS/*_erm_t1 "
                        "--output ensemble.json")
    parser.add_argument("runs", nargs="+", help="run directories written by train_all.py, same dataset")
    parser.add_argument("--data_dir", default=None, help="where the data is now (default: the first run's data_dir)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--num_workers", type=int, default=-1,
                        help="evaluation loader workers; -1 sizes them to the machine")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="evaluation batch size (default: the run's test_batchsize)")
    parser.add_argument("--test_envs", type=int, nargs="+", default=None, help="test domains (default: all shared)")
    parser.add_argument("--output", default=None, help="also write the tables to this JSON file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    def work():
        result = ensemble(args.runs, args.data_dir, args.device, args.num_workers, args.batch_size, args.test_envs)
        if args.output:
            misc.atomic_write_text(args.output, misc.to_json(result, indent=2))

    return cli.run_main(work, "interrupted: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
