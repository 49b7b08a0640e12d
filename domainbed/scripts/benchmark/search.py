"""ASHA against DomainBed's random search at the same number of training steps.

    python -m domainbed.scripts.benchmark search --data_dir DATA [--dataset RotatedMNIST]
        [--algorithm ERM] [--n_random 4] [--steps 60] [--checkpoint_freq 10] [--batch_size 16]
        [--examples_per_domain 300] [--test_envs 0] [--reduction_factor 3] [--output_dir DIR]
        [-- more train_all.py arguments]

Both searches run as sweeps do, one train_all.py job per candidate on trial seed 0, through the
local launcher: the random search trains hparams seeds 1 .. n_random (DomainBed's draws) for all
their steps; ASHA (`sweep --search asha`, its search phase only) asks for candidates from the same
distributions, each with the seed of the random search's candidate of the same rank, with the
random search's steps as its budget (`--budget_steps`, a cap: it asks for a trial only while that
trial could finish within it).
Reported per search: candidates tried, how many finished or were pruned, the training steps
spent (every fold's, up to its last checkpoint) and the best training-domain validation accuracy
reached (a candidate's: the mean over its folds of the best `train_out` over the checkpoints,
the number by which the search ranks its trials), with that candidate's searched hparams. This
measures steps, not seconds: evaluation at checkpoints and start-up are the same per run.
"""

import argparse
from pathlib import Path

from prettytable import PrettyTable

from domainbed.runs.run_files import read_hparams, read_records
from domainbed.scripts import sweep, sweep_search
from domainbed.search import study as search_study
from domainbed.search.space import searched


def add_arguments(parser) -> None:
    parser.add_argument("--data_dir", required=True, help="holds MNIST/raw for RotatedMNIST")
    parser.add_argument("--dataset", default="RotatedMNIST")
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--n_random", type=int, default=4, help="candidates of the random search")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--checkpoint_freq", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=16,
                        help="fixed for both searches (0: searched): DomainBed's draw for small images, 8 to 512 "
                             "per domain, makes a step's cost vary 60-fold")
    parser.add_argument("--examples_per_domain", type=int, default=300)
    parser.add_argument("--test_envs", type=int, nargs="+", default=[0], help="the folds each candidate trains")
    parser.add_argument("--reduction_factor", type=int, default=3)
    parser.add_argument("--output_dir", default="benchmark_search", help="both sweeps' directories under it")
    parser.add_argument("train_all_args", nargs=argparse.REMAINDER,
                        help="after `--`: more train_all.py arguments for every candidate")


def _sweep_argv(args, output_dir) -> list:
    extra = [token for token in args.train_all_args if token != "--"]
    return ["launch", "--datasets", args.dataset, "--algorithms", args.algorithm, "--n_trials", "1", "--steps",
            str(args.steps), "--checkpoint_freq", str(args.checkpoint_freq), "--data_dir", args.data_dir,
            "--output_dir", str(output_dir), "--skip_confirmation", "--reduction_factor", str(args.reduction_factor),
            "--", "--test_envs", *map(str, args.test_envs), "--examples_per_domain", str(args.examples_per_domain),
            "--swad", "False", *(["--batch_size", str(args.batch_size)] if args.batch_size else []), *extra]


def _spent(records: dict) -> int:
    return sum(fold[-1]["step"] + 1 for fold in records.values())


def random_search(args) -> dict:
    argv = _sweep_argv(args, Path(args.output_dir) / "random")
    argv[argv.index("--n_trials"):argv.index("--n_trials")] = ["--n_hparams_from", "1", "--n_hparams",
                                                                 str(args.n_random + 1)]
    result = sweep.run(argv)
    candidates = []
    for job in result["jobs"]:
        run_dir = sweep_search.run_directory(job)
        records = read_records(run_dir) if run_dir else {}
        hparams = read_hparams(run_dir) if run_dir else {}
        value = search_study.objective(records) if job.state == sweep.DONE else float("nan")
        candidates.append({"value": value, "spent": _spent(records) if records else 0, "hparams": hparams,
                           "state": job.state})
    return candidates


def asha_search(args, budget: int) -> tuple:
    argv = _sweep_argv(args, Path(args.output_dir) / "asha")
    argv[argv.index("--n_trials"):argv.index("--n_trials")] = ["--search", "asha", "--n_hparams", "1000",
                                                                 "--budget_steps", str(budget)]
    parsed = sweep.parse_args(argv)
    (config,) = [sweep_search.make_config(parsed, args.dataset, args.algorithm)]
    Path(parsed.output_dir).mkdir(parents=True, exist_ok=True)
    study = search_study.create_study(config)
    sweep_search.search(parsed, config, study)
    return study


def main(args) -> str:
    candidates = random_search(args)
    budget = sum(candidate["spent"] for candidate in candidates)
    study = asha_search(args, budget)
    names = sorted(searched(args.algorithm, args.dataset))
    table = PrettyTable(["search", "candidates", "finished", "pruned", "steps spent", "best train-domain val",
                         "its hparams"])
    finished = [c for c in candidates if c["state"] == sweep.DONE]
    best = max(finished, key=lambda c: c["value"]) if finished else None
    table.add_row(["random (DomainBed)", len(candidates), len(finished), 0, budget,
                   f"{100 * best['value']:.2f}%" if best else "-", _hparams(best["hparams"], names) if best else "-"])
    trials = study.get_trials(deepcopy=False)
    states = [trial.state.name for trial in trials]
    top = sweep_search.best_trial(study)
    table.add_row([f"ASHA (eta {args.reduction_factor})", len(trials), states.count("COMPLETE"),
                   states.count("PRUNED"), search_study.total_steps(study),
                   f"{100 * top.value:.2f}%" if top else "-",
                   _hparams(top.user_attrs[search_study.HPARAMS], names) if top else "-"])
    lines = [f"{args.dataset} {args.algorithm}, test envs {args.test_envs}, {args.steps} steps per fold, "
             f"checkpoint every {args.checkpoint_freq}, {args.examples_per_domain} examples per domain, "
             f"batch size {args.batch_size or 'searched'}, trial seed 0", str(table),
             "ASHA's trials (steps trained, state, value at the last report):"]
    lines += [f"  trial {t.number}: {search_study.steps_spent(t)} steps, {t.state.name.lower()}, "
              f"{100 * (t.value if t.value is not None else float('nan')):.2f}%" for t in trials]
    lines += ["random search's candidates (steps, best train-domain val):"]
    lines += [f"  hparams seed {i + 1}: {c['spent']} steps, {100 * c['value']:.2f}%" for i, c in enumerate(candidates)]
    return "\n".join(lines)


def _hparams(hparams: dict, names) -> str:
    shown = {name: hparams[name] for name in ("lr", "batch_size", "weight_decay") if name in hparams and name in names}
    return ", ".join(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in shown.items())
