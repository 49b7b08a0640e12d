"""The command line of train_all.py: one algorithm on every leave-one-domain-out fold of a dataset.

    python train_all.py NAME [extra.yaml ...] --dataset PACS --data_dir DATA --algorithm ERM \
        [--steps N --checkpoint_freq K ...] [--any_hparam value ...] [--resume [RUN_DIR]]

also `domainbed-train ...` and `python -m domainbed.scripts.train_all ...`. The flags are SWAD's; every
other `--key value` sets an hparam (see domainbed/hparams/config.py). `--resume` continues the most
recent run of the same name and dataset (or RUN_DIR): finished folds are skipped, the unfinished
one continues from its last checkpoint (domainbed/runs/checkpoint.py). The experiment itself is
domainbed/training/experiment.py. DomainBed's own train.py, one run of given test environments,
is domainbed/scripts/train.py.
"""

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path

from domainbed import distributed
from domainbed.algorithms import ALGORITHMS
from domainbed.datasets import DATASETS
from domainbed.errors import UsageError
from domainbed.hparams.config import COMMAND_LINE, UnknownHparamError, parse_overrides
from domainbed.hparams.help import hparams_help
from domainbed.runs import layout
from domainbed.training.extensions import ENDED_EXIT_CODE, EndRun
from domainbed.training.experiment import RunFailed, RunInterrupted, error_line, run_experiment


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
    parser.add_argument("--data_dir", default="datadir/",
                        help="folder holding the datasets, as download.py writes it (default: %(default)s)")
    parser.add_argument("--dataset", default="PACS",
                        help=f"one of {', '.join(sorted(DATASETS))} (default: %(default)s)")
    parser.add_argument("--algorithm", default="ERM",
                        help=f"one of {', '.join(sorted(ALGORITHMS))}, or an outside method as "
                             "package.module:Class (default: %(default)s)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the dataset into --data_dir first when it is not there (as download.py does)")
    parser.add_argument("--trial_seed", type=int, default=0, help="seeds the holdout splits and random hparams")
    parser.add_argument("--hparams_seed", type=int, default=0,
                        help="0: the registry's defaults; N > 0: a random draw seeded by (N, trial_seed), as DomainBed")
    parser.add_argument("--seed", type=int, default=0, help="seeds everything else")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the dataset's)")
    parser.add_argument("--checkpoint_freq", type=int, default=None, help="evaluate every N steps")
    parser.add_argument("--test_envs", type=int, nargs="+", default=None,
                        help="the folds to run, one per test environment (default: all)")
    parser.add_argument("--pair_folds", action="store_true",
                        help="also train every fold holding out two environments (one of them a fold's test "
                             "environment), as DomainBed's sweep does for collect_results' leave-one-domain-out "
                             "selection; the run's table still reports the single folds")
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
    `--key [value]` is an hparam. Done by hand, not with argparse's parse_known_args, which gives
    an unknown flag's value to the positionals (`--alpha -0.5` would make -0.5 an extra yaml file)
    and cannot let `--resume` take its value only when it is a run directory.
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
    return os.sep in token or "/" in token or layout.is_run_dir(token)


def _flag_value(argv, flag, default):
    for index, token in enumerate(argv):
        if token == flag and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return default


def parse(argv) -> tuple:
    """(parsed flags, hparam overrides [(key, raw value)]) of a train_all.py command line."""
    parser = make_parser()
    known, extra = split_argv(parser, argv)
    args = parser.parse_args(known)
    return args, parse_overrides(extra)


def run(argv) -> dict:
    """Run the command line `argv` (without the program name); returns the table (run_experiment's)."""
    args, overrides = parse(argv)
    try:
        return run_experiment(args, overrides, command=f"python train_all.py {' '.join(argv)}")
    except UnknownHparamError as error:
        if error.source != COMMAND_LINE:
            raise
        # an unknown --key may be a misspelt flag (--datadir), which only this parser knows
        flags = [flag for flag in make_parser()._option_string_actions if flag.startswith("--")]
        raise UnknownHparamError(error.key, error.valid, error.source, flags) from None


def resume_command(argv, run_dir) -> str:
    """The command line that continues `run_dir`: `argv` with its own `--resume [DIR]` replaced."""
    kept = list(argv)
    if "--resume" in kept:
        at = kept.index("--resume")
        del kept[at:at + (2 if at + 1 < len(kept) and Path(kept[at + 1]).is_dir() else 1)]
    return shlex.join(["python", "train_all.py", *kept, "--resume", str(run_dir)])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    finally:
        distributed.shutdown()


def _main(argv) -> int:
    try:
        run(argv)
    except EndRun as ended:
        print(f"ended: {ended}", file=sys.stderr)
        return ENDED_EXIT_CODE
    except RunFailed as failed:
        print(f"error: {failed}; {failed.run_dir} keeps the run so far: fix the cause and continue it with "
              f"--resume {failed.run_dir}", file=sys.stderr)
        return 2
    except UsageError as error:
        if distributed.is_main():  # every process of a data-parallel run finds the same error
            print(f"error: {error_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, an unwritable folder: what was written before stays
        print(f"error: cannot write {error.filename or 'the run directory'}: {error.strerror or error}; "
              "free space or choose a writable --output_dir, then continue with --resume", file=sys.stderr)
        return 1
    except RunInterrupted as interrupted:
        if not distributed.is_main():  # rank 0 says it, once
            return 130
        by = f" by {interrupted.signal_name}" if interrupted.signal_name else ""
        line = (f"interrupted{by}: {interrupted.run_dir} holds the records and checkpoints so far; continue it with\n"
                f"  {resume_command(argv, interrupted.run_dir)}")
        print(line, file=sys.stderr)
        # log.txt is closed by now; a run whose output is a file (Slurm, nohup) keeps the hint there too
        with contextlib.suppress(OSError), open(layout.log_path(interrupted.run_dir), "a", encoding="utf-8") as log:
            log.write(line + "\n")
        return 130
    except KeyboardInterrupt:
        print("interrupted before the run directory was made: nothing to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
