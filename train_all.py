"""Train one algorithm on every leave-one-domain-out fold of a dataset and print the table.

    python train_all.py NAME [extra.yaml ...] --dataset PACS --data_dir DATA --algorithm ERM \
        [--steps N --checkpoint_freq K ...] [--any_hparam value ...] [--resume [RUN_DIR]]

The flags are SWAD's; every other `--key value` sets an hparam (see domainbed/hparams/config.py).
`--resume` continues the most recent run of the same name and dataset (or RUN_DIR): finished
folds are skipped, the unfinished one continues from its last checkpoint (domainbed/runs/checkpoint.py).
"""

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision

from domainbed import misc
from domainbed.runs import checkpoint, layout
from domainbed.results import report
from domainbed.algorithms import get_algorithm_class
from domainbed.hparams.config import flatten, parse_overrides, run_hparams
from domainbed.datasets import get_dataset_class
from domainbed.datasets.official_split import SPLITS, list_path
from domainbed.errors import UsageError
from domainbed.hparams.help import hparams_help
from domainbed.training.log import RunLog
from domainbed.runs.run_dir import RunLock, compare_settings, latest_run_dir, new_run_dir
from domainbed.training.trainer import FoldSettings, train_fold
from domainbed.hparams.checks import check_run_settings



EXAMPLE = """examples:
  python train_all.py PACS0 --dataset PACS --data_dir DATA --algorithm SAGM_DG --alpha 0.001 --swad False
  python train_all.py demo --dataset Synthetic --steps 20 --checkpoint_freq 10 --resume
  python train_all.py --algorithm SAGM_DG --help      (lists SAGM_DG's hparams and their defaults)
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Domain generalization: all leave-one-domain-out folds",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("name", help="name of the run; its directory is OUTPUT_DIR/DATASET/TIMESTAMP_NAME")
    parser.add_argument("configs", nargs="*", help="extra yaml files of hparams, applied in order")
    parser.add_argument("--data_dir", default="datadir/")
    parser.add_argument("--dataset", default="PACS")
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--trial_seed", type=int, default=0, help="seeds the holdout splits and random hparams")
    parser.add_argument("--hparams_seed", type=int, default=0,
                        help="0: the registry's defaults; N > 0: a random draw seeded by (N, trial_seed), as DomainBed")
    parser.add_argument("--seed", type=int, default=0, help="seeds everything else")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the dataset's)")
    parser.add_argument("--checkpoint_freq", type=int, default=None, help="evaluate every N steps")
    parser.add_argument("--test_envs", type=int, nargs="+", default=None,
                        help="the folds to run, one per test environment (default: all)")
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--split", choices=["random", "official"], default="random",
                        help="random: DomainBed's seeded holdout (SWAD); official: PACS's train/crossval kfold "
                             "lists, testing on the whole held-out domain (RSC, DMG)")
    parser.add_argument("--split_dir", default=None,
                        help="folder of the official *_train_kfold.txt / *_crossval_kfold.txt lists "
                             "(default: DATA_DIR/PACS_splits)")
    parser.add_argument("--model_save", type=int, default=None, help="save a checkpoint at every evaluation from this step on")
    parser.add_argument("--deterministic", action="store_true", help="deterministic cuDNN and torch algorithms")
    parser.add_argument("--tb_freq", type=int, default=10,
                        help="TensorBoard scalars of the update every N steps (0: no TensorBoard events)")
    parser.add_argument("--debug", action="store_true", help="10 steps, evaluation every 5")
    parser.add_argument("--show", action="store_true", help="print args and hparams, then exit")
    parser.add_argument("--evalmode", choices=["fast", "all"], default="fast",
                        help="fast skips the training domains' in-splits, which no selection row uses")
    parser.add_argument("--prebuild_loader", action="store_true", help="accepted for SWAD compatibility")
    parser.add_argument("--output_dir", default="train_output")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                        help="continue RUN_DIR, or without a value the most recent run of this name and dataset "
                             "under --output_dir (a new run when there is none)")
    parser.add_argument("--tag", default=None,
                        help="a name for a family of runs; collect_results groups runs by algorithm and tag")
    parser.add_argument("--keep_best", action="store_true",
                        help="keep the checkpoint of best training-domain validation accuracy besides the last")
    return parser


def split_argv(parser, argv):
    """(argparse tokens, hparam tokens): our flags and positionals go to argparse, every other
    `--key [value]` is an hparam. Done by hand so hparam values such as -0.5 stay with their key.
    Positionals come first in the argparse tokens, so flags may stand anywhere; `--resume` takes
    the next token as its RUN_DIR only when it names a run directory (or a path), so that
    `--resume NAME ...` resumes the run NAME. With -h/--help, the parser's help also lists the
    hparams of the chosen algorithm and dataset."""
    positionals, options, extra = [], [], []
    actions = parser._option_string_actions
    index = 0
    while index < len(argv):
        token = argv[index]
        key = token.split("=", 1)[0]
        if token.startswith("-") and key in actions:
            action = actions[key]
            options.append(token)
            index += 1
            if "=" in token or action.nargs == 0:
                continue
            wanted = 1 if action.nargs in (None, "?") else len(argv)
            if action.nargs == "?" and action.dest == "resume" and index < len(argv) \
                    and not _names_a_run_dir(argv[index]):
                wanted = 0
            while wanted and index < len(argv) and not argv[index].startswith("--"):
                options.append(argv[index])
                index += 1
                wanted -= 1
        elif token.startswith("--"):
            extra.append(token)
            index += 1
            if "=" not in token and index < len(argv) and not argv[index].startswith("--"):
                extra.append(argv[index])
                index += 1
        else:
            positionals.append(token)
            index += 1
    if "-h" in options or "--help" in options:
        parser.epilog = (parser.epilog or "") + "\n" + hparams_help(_flag_value(argv, "--algorithm", "ERM"),
                                                                    _flag_value(argv, "--dataset", "PACS"))
    return positionals + options, extra


def _names_a_run_dir(token: str) -> bool:
    return os.sep in token or "/" in token or (Path(token) / "args.json").is_file()


def _flag_value(argv, flag, default):
    for index, token in enumerate(argv):
        if token == flag and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return default


def environment_report() -> list:
    return [
        "Environment:",
        f"\tPython: {platform.python_version()}",
        f"\tPyTorch: {torch.__version__}",
        f"\tTorchvision: {torchvision.__version__}",
        f"\tCUDA: {torch.version.cuda} (available: {torch.cuda.is_available()})",
        f"\tNumPy: {np.__version__}",
        f"\tPIL: {PIL.__version__}",
    ]


def run(argv) -> dict:
    parser = make_parser()
    known, extra = split_argv(parser, argv)
    args = parser.parse_args(known)
    dataset_class = get_dataset_class(args.dataset)
    get_algorithm_class(args.algorithm)
    hparams = run_hparams(args.algorithm, args.dataset, args.hparams_seed, args.trial_seed, args.configs,
                          parse_overrides(extra))
    if args.debug:
        args.steps, args.checkpoint_freq, args.name = 10, 5, args.name + "_debug"
    check_run_settings(args, hparams)
    args.split_dir = official_split_dir(args)  # resolved once, and saved so the tools rebuild the same splits

    check_run_name(args.name)
    # everything that can be checked is checked before the run directory exists
    dataset = None if args.show else dataset_class(args.data_dir, [], hparams)
    if dataset is not None:
        check_environments(args, dataset)
    out_dir = run_directory(args)
    resuming = args.resume is not None and (out_dir / "args.json").is_file()
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir):  # before the log, so that a second process writes nothing into this run's log
        log = RunLog(out_dir / "log.txt")
        try:
            return _run(args, hparams, dataset, out_dir, log, argv, resuming)
        except UsageError as error:
            log.to_file(f"error: {error}")  # main prints it, once
            raise
        except KeyboardInterrupt:
            raise Interrupted(out_dir, argv) from None
        finally:
            log.close()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: where the run is and the command that continues it."""

    def __init__(self, out_dir, argv):
        super().__init__()
        kept = list(argv)
        if "--resume" in kept:
            at = kept.index("--resume")
            del kept[at:at + (2 if at + 1 < len(kept) and Path(kept[at + 1]).is_dir() else 1)]
        command = ["python", "train_all.py", *kept, "--resume", str(out_dir)]
        self.message = (f"interrupted: {out_dir} holds the records and checkpoints so far; continue it with\n"
                        f"  {shlex.join(command)}")


def check_environments(args, dataset) -> None:
    """The folds asked for exist (datasets whose domains are the folders found, too)."""
    for env in args.test_envs or []:
        if not 0 <= env < len(dataset):
            raise UsageError(
                f"--test_envs {env} is out of range; {args.dataset} has environments 0-{len(dataset) - 1} "
                f"({', '.join(f'{i}={n}' for i, n in enumerate(dataset.environments))})"
            )
    if len(dataset) < 2:
        raise UsageError(f"{args.dataset} has {len(dataset)} environment; leave-one-domain-out needs at least 2")


def check_run_name(name: str) -> None:
    """A run name is one path component: its directory must stay inside the output folder."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise UsageError(f"run name {name!r} must be a single folder name (no '/', not empty, not '.' or '..')")


def official_split_dir(args) -> str | None:
    """Where the official split lists are, or None for the random split."""
    if args.split != "official":
        return None
    if args.dataset != "PACS":
        raise UsageError(f"--split official exists for PACS only, not {args.dataset}; valid: --split random")
    split_dir = args.split_dir or str(Path(args.data_dir) / "PACS_splits")
    for domain in get_dataset_class("PACS").DOMAIN_DIRS:
        for split in SPLITS:
            if not list_path(split_dir, domain, split).is_file():
                raise UsageError(f"official split list {list_path(split_dir, domain, split)} does not exist; "
                                 "point --split_dir at the folder holding PACS's *_kfold.txt lists")
    return split_dir


def run_directory(args) -> Path:
    """A new OUTPUT_DIR/DATASET/TIMESTAMP_NAME, or the run directory that --resume names or finds."""
    if args.resume is None:
        return new_run_dir(args.output_dir, args.dataset, args.name)
    if args.resume is True:
        path = latest_run_dir(args.output_dir, args.dataset, args.name)
        if path is None:
            return new_run_dir(args.output_dir, args.dataset, args.name)
    else:
        path = Path(args.resume)
    missing = [name for name in ("args.json", "hparams.json") if not (path / name).is_file()]
    if missing:
        raise UsageError(f"--resume {path}: not a resumable run directory (no {' or '.join(missing)}); give a "
                         f"directory that train_all.py wrote, or leave out --resume for a new run")
    return path


def _run(args, hparams, dataset, out_dir, log, argv, resuming) -> dict:
    log(f"Command: python train_all.py {' '.join(argv)}")
    for line in environment_report():
        log(line)
    log("Args:")
    for key, value in sorted(vars(args).items()):
        log(f"\t{key}: {value}")
    log("HParams:")
    for key, value in sorted(flatten(hparams).items()):
        log(f"\t{key}: {value}")
    if resuming:
        differences = compare_settings(out_dir, vars(args), hparams, checkpoint.RESUMABLE_HPARAMS)
        if differences:
            raise UsageError(f"cannot resume {out_dir}: its settings differ ({'; '.join(differences)}); "
                             f"use the run's own command line, or leave out --resume for a new run")
        stale = checkpoint.remove_temporaries(out_dir)
        log(f"Resuming {out_dir}" + (f" (removed {len(stale)} unfinished temporary files)" if stale else ""))
    else:
        misc.atomic_write_text(out_dir / "args.json", misc.to_json(vars(args), indent=2, sort_keys=True))
        misc.atomic_write_text(out_dir / "hparams.json", misc.to_json(hparams, indent=2, sort_keys=True))
    if args.show:
        return {}

    misc.set_deterministic(args.deterministic)
    log(f"Dataset {args.dataset}: {len(dataset)} environments, {dataset.num_classes} classes")
    for env, name in enumerate(dataset.environments):
        log(f"\tenv{env}: {name} ({len(dataset[env])} items)")

    test_envs = args.test_envs if args.test_envs is not None else list(range(len(dataset)))
    n_steps = args.steps or dataset.N_STEPS
    checkpoint_freq = args.checkpoint_freq or dataset.CHECKPOINT_FREQ
    if n_steps <= 0 or checkpoint_freq <= 0:
        raise UsageError(f"--steps ({n_steps}) and --checkpoint_freq ({checkpoint_freq}) must be positive")
    # As SWAD: one more step than a multiple of checkpoint_freq, so the last step is evaluated.
    n_steps = (n_steps // checkpoint_freq) * checkpoint_freq + 1
    log(f"n_steps = {n_steps}, checkpoint_freq = {checkpoint_freq}, test_envs = {test_envs}")

    fold_rows, rules = [], {}
    for env in test_envs:
        finished = checkpoint.finished(out_dir, [env]) if resuming else None
        if finished is not None:
            log(f"[{layout.fold_tag([env])}] finished earlier: skipped")
            rows, row_rules = finished["rows"], finished["row_rules"]
        else:
            settings = FoldSettings(
                algorithm=args.algorithm, test_envs=[env], n_steps=n_steps, checkpoint_freq=checkpoint_freq,
                seed=args.seed, trial_seed=args.trial_seed, holdout_fraction=args.holdout_fraction,
                evalmode=args.evalmode, device=args.device, model_save=args.model_save, out_dir=out_dir,
                resume=resuming, keep_best=args.keep_best, tb_freq=args.tb_freq,
                split=args.split, split_dir=args.split_dir,
            )
            rows, row_rules, _, _ = train_fold(dataset, settings, hparams, log, out_dir / "results.jsonl")
        fold_rows.append(rows)
        rules.update(row_rules)

    env_names = [dataset.environments[env] for env in test_envs]
    table = report.build_table(fold_rows, env_names)
    text = report.format_table(table, env_names, rules)
    log("=== Summary ===")
    log(f"Algorithm: {args.algorithm}, dataset: {args.dataset}, output: {out_dir}")
    log(text)
    misc.atomic_write_text(out_dir / "table.txt", text + "\n")
    summary = {"dataset": args.dataset, "algorithm": args.algorithm, "environments": env_names,
               "test_envs": test_envs, "rows": table, "rules": {row: rules.get(row, "") for row in table},
               "notes": {key: text for key, text in rules.items() if key not in table}}
    misc.atomic_write_text(out_dir / "table.json", misc.to_json(summary, indent=2))
    return {"out_dir": out_dir, **summary}


def _one_line(error: Exception) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with the
    worker's traceback folded into the message."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    prefix = f"{UsageError.__module__}.{UsageError.__name__}: "
    return last.split(prefix, 1)[1] if prefix in last else last


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(argv)
    except UsageError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, an unwritable folder: what was written before stays
        print(f"error: cannot write {error.filename or 'the run directory'}: {error.strerror or error}; "
              "free space or choose a writable --output_dir, then continue with --resume", file=sys.stderr)
        return 1
    except Interrupted as interrupted:
        print(interrupted.message, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before the run directory was made: nothing to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
