"""One experiment: every leave-one-domain-out fold of one algorithm on one dataset, and its table.

`run_experiment(args, overrides)` is train_all.py after the parsing: it checks everything that can
be checked before the run directory exists, makes (or, with `--resume`, finds) the directory and
locks it, writes args.json and hparams.json and the log, trains the folds one after the other
(with `--pair_folds`, then the folds holding out two environments, which only collect_results'
leave-one-domain-out selection reads)
(a resumed run skips those that finished and continues the unfinished one from its checkpoint,
domainbed/runs/checkpoint.py), and writes the table as table.txt and table.json.

An error once the directory exists (an unreadable image met by a loader, a non-finite loss) ends
log.txt with its line. If this launch made the directory and nothing was saved to continue from
(no fold's checkpoint: the first is written after step 0's update and evaluation), the directory
is removed, so a failed launch leaves nothing behind. Otherwise it is kept, and an error in a
fold leaves failed.json (the error line, the fold, its last saved step) for `--resume`, which
continues the fold and removes the marker, and for the sweep's `status`. A hook that ends the
run by decision (`EndRun`: the hparam search pruning its trial) leaves its records and no table.
"""

import contextlib
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision

from domainbed import distributed, misc
from domainbed.algorithms import ALGORITHMS, get_algorithm_class
from domainbed.datasets import get_dataset_class
from domainbed.datasets.official_split import SPLITS, list_path
from domainbed.download.on_demand import fetch_if_missing
from domainbed.errors import UsageError
from domainbed.hparams.checks import check_run_settings
from domainbed.hparams.config import flatten, run_hparams
from domainbed.hparams_registry import run_setting_defaults
from domainbed.results import report
from domainbed.runs import checkpoint, layout, run_files
from domainbed.runs.run_dir import RunLock, compare_settings, resolve_run_dir
from domainbed.training.extensions import EndRun, build_extensions
from domainbed.training.finite_numbers import NonFiniteNumberError
from domainbed.training.initialization import initialize
from domainbed.training.log import RunLog
from domainbed.training.termination import Terminated, sigterm_as_interrupt
from domainbed.training.trainer import FoldSettings, train_fold


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM after the run directory was made: `run_dir` holds the records and
    checkpoints so far; `signal_name` is "SIGTERM" when that stopped it, None for Ctrl-C."""

    def __init__(self, run_dir: Path, signal_name: str | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.signal_name = signal_name


class RunFailed(UsageError):
    """A fold stopped on a usage error (a bad image) after the run saved progress: `run_dir` keeps
    it, with failed.json, and `--resume` continues it once the cause is fixed."""

    def __init__(self, line: str, run_dir: Path):
        super().__init__(line)
        self.run_dir = run_dir


@dataclass
class _Training:
    """The fold being trained, if any: what failed.json names when an error stops the run."""

    test_envs: list | None = None


def error_line(error: Exception) -> str:
    """The user-facing line of an error: a UsageError's message, also when a DataLoader worker
    re-raised it with the worker's traceback folded into the message; any other error as Python
    ends its traceback, `Type: message`."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    prefix = f"{UsageError.__module__}.{UsageError.__name__}: "
    if prefix in last:
        return last.split(prefix, 1)[1]
    folded = len(lines) > 1  # a worker's traceback: its last line already names the type
    return last if isinstance(error, UsageError) or folded else f"{type(error).__name__}: {last}"


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
    if getattr(args, "pair_folds", False) and len(dataset) < 3:
        raise UsageError(f"--pair_folds needs a dataset of at least 3 environments (a pair fold keeps a training "
                         f"domain); {args.dataset} has {len(dataset)}")


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


def check_model(args, dataset, hparams) -> None:
    """Build the algorithm once on the CPU, as a fold will, so that what only the model can tell (a
    backbone's weights file, every fold's initial model, a layer a method or quantization asks for
    that it lacks) is a one-line error before the run directory exists. The folds seed themselves,
    so this costs no determinism."""
    n_train_domains = len(dataset) - 1  # a single fold holds one environment out
    algorithm = get_algorithm_class(args.algorithm)(dataset.input_shape, dataset.num_classes, n_train_domains,
                                                    hparams)
    for fold in folds(args, dataset):
        initialize(algorithm, hparams, dataset, fold)
    for extension in build_extensions(hparams):
        extension.check_model(algorithm, args.algorithm)
    distributed.check_batchnorm(algorithm, args.device, args.algorithm)


def single_test_envs(args, dataset) -> list:
    return args.test_envs if args.test_envs is not None else list(range(len(dataset)))


def pair_folds(args, dataset) -> list:
    """`--pair_folds`: every fold holding out a pair of environments one of which is a single
    fold's test environment, as DomainBed's sweep runs them for leave-one-domain-out selection
    (collect_results validates the fold of test environment i on environment j of fold (i, j))."""
    if not getattr(args, "pair_folds", False):
        return []
    tested = single_test_envs(args, dataset)
    return [[i, j] for i in range(len(dataset)) for j in range(i + 1, len(dataset)) if i in tested or j in tested]


def folds(args, dataset) -> list:
    """The test environments of every fold the run trains: the single ones, then the pairs."""
    return [[env] for env in single_test_envs(args, dataset)] + pair_folds(args, dataset)


def run_experiment(args, overrides=(), command: str = "") -> dict:
    """Run every fold that `args` (train_all.py's parsed flags) asks for, with the hparams
    `overrides` ([(key, raw value)], from `--key value`); `command` is logged as the run's command
    line. Returns the table as table.json holds it, plus `out_dir`, the run directory. Ctrl-C or
    SIGTERM once the run directory exists raises `RunInterrupted`."""
    dataset_class = get_dataset_class(args.dataset)
    distributed.check_method(get_algorithm_class(args.algorithm), args.algorithm,
                             [name for name, cls in ALGORITHMS.items() if cls.data_parallel()])
    hparams = run_hparams(args.algorithm, args.dataset, args.hparams_seed, args.trial_seed, args.configs, overrides)
    if args.debug:
        args.steps, args.checkpoint_freq, args.name = 10, 5, args.name + "_debug"
    check_run_settings(args, hparams)
    distributed.check_batch_size(hparams["batch_size"])
    args.split_dir = official_split_dir(args)  # resolved once, and saved so the tools rebuild the same splits

    check_run_name(args.name)
    if getattr(args, "download", False) and not args.show:
        fetch_if_missing(args.dataset, args.data_dir)
    # everything that can be checked is checked before the run directory exists
    dataset = None if args.show else dataset_class(args.data_dir, [], hparams)
    if dataset is not None:
        check_environments(args, dataset)
        check_model(args, dataset, hparams)
    # saved in args.json, where collect_results reads it; args.dataset stays the registered name that rebuilds the data
    args.dataset_title = dataset_class.title(args.dataset, args.data_dir)
    device = distributed.init(args.device)  # this process's device; args.device stays as given
    out_dir = _shared_run_dir(args)
    resuming = args.resume is not None and layout.is_run_dir(out_dir)
    created = not out_dir.exists()
    main = distributed.is_main()  # the one process that writes and prints
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()  # the directory exists before any process reads it
    # the lock before the log, so that a second process writes nothing into this run's log
    with sigterm_as_interrupt(), RunLock(out_dir) if main else contextlib.nullcontext():
        log = RunLog(layout.log_path(out_dir)) if main else RunLog(echo=False)
        training = _Training()
        try:
            return _run(args, hparams, dataset, out_dir, log, command, resuming, training, device)
        except KeyboardInterrupt as interrupt:
            raise RunInterrupted(out_dir, "SIGTERM" if isinstance(interrupt, Terminated) else None) from None
        except EndRun as ended:
            log.to_file(f"ended: {ended}")  # the command line prints it, once
            raise
        except Exception as error:
            if not main:
                raise
            line = error_line(error)
            log.to_file(f"error: {line}")  # the command line prints it, once
            log.close()
            if created and not layout.has_progress(out_dir) and not layout.records_path(out_dir).exists():
                shutil.rmtree(out_dir)
                raise
            if training.test_envs is None:
                raise
            _mark_failed(out_dir, line, training.test_envs)
            # a non-finite number comes back on resume with the same settings: no resume hint
            if isinstance(error, UsageError) and not isinstance(error, NonFiniteNumberError):
                raise RunFailed(line, out_dir) from error
            raise
        finally:
            log.close()


def _shared_run_dir(args) -> Path:
    """The run directory, resolved by rank 0 (its timestamp, the newest run to resume) and the
    same on every process; a one-line error there is every process's."""
    if not distributed.is_main():
        resolved = distributed.broadcast(None)
    else:
        try:
            resolved = distributed.broadcast(resolve_run_dir(args.output_dir, args.dataset_title, args.name,
                                                             args.resume))
        except UsageError as error:
            distributed.broadcast(UsageError(str(error)))
            raise
    if isinstance(resolved, UsageError):
        raise resolved
    return resolved


def _mark_failed(out_dir: Path, line: str, test_envs: list) -> None:
    last_saved_step = max(checkpoint.list_checkpoints(out_dir, test_envs), default=None)
    # on a full disk the marker cannot be written; the error itself still reaches the user
    with contextlib.suppress(OSError):
        run_files.write_failure(out_dir, line, test_envs, last_saved_step)


def log_settings(log, command: str, args, hparams: dict) -> None:
    """The head of a run's log: its command (when given), the environment, args and hparams."""
    if command:
        log(f"Command: {command}")
    for line in environment_report():
        log(line)
    log("Args:")
    for key, value in sorted(vars(args).items()):
        log(f"\t{key}: {value}")
    log("HParams:")
    for key, value in sorted(flatten(hparams).items()):
        log(f"\t{key}: {value}")


def _keep_settings(out_dir: Path, args, hparams: dict, resuming: bool, log) -> None:
    """A new run saves its settings; a resumed one must have the saved ones."""
    if not resuming:
        if distributed.is_main():
            run_files.write_settings(out_dir, vars(args), hparams)
        return
    differences = compare_settings(out_dir, vars(args), hparams, checkpoint.RESUMABLE_HPARAMS,
                                   run_setting_defaults(args.algorithm, args.dataset))
    if differences:
        raise UsageError(f"cannot resume {out_dir}: its settings differ ({'; '.join(differences)}); "
                         f"use the run's own command line, or leave out --resume for a new run")
    stale = checkpoint.remove_temporaries(out_dir) if distributed.is_main() else []
    log(f"Resuming {out_dir}" + (f" (removed {len(stale)} unfinished temporary files)" if stale else ""))
    failure = run_files.read_failure(out_dir)
    if failure is not None:
        saved = failure["last_saved_step"]
        where = "before its first checkpoint" if saved is None else f"after its checkpoint of step {saved}"
        log(f"[{failure['fold']}] had failed {where}: {failure['error']}")


def _schedule(args, dataset) -> tuple:
    """(test environments, n_steps, checkpoint_freq)."""
    test_envs = single_test_envs(args, dataset)
    n_steps = args.steps or dataset.N_STEPS
    checkpoint_freq = args.checkpoint_freq or dataset.CHECKPOINT_FREQ
    if n_steps <= 0 or checkpoint_freq <= 0:
        raise UsageError(f"--steps ({n_steps}) and --checkpoint_freq ({checkpoint_freq}) must be positive")
    if n_steps % checkpoint_freq == 0:
        # SWAD's convention: step N itself is evaluated, so --steps 5000 --checkpoint_freq 100 runs 5001 steps.
        n_steps += 1
    # Any other N is honoured rather than rounded down as in SWAD (which turns --steps 5 into one
    # step): the trainer also evaluates the final step.
    return test_envs, n_steps, checkpoint_freq


def _run(args, hparams, dataset, out_dir, log, command, resuming, training: _Training, device: str) -> dict:
    log_settings(log, command, args, hparams)
    _keep_settings(out_dir, args, hparams, resuming, log)
    if args.show:
        return {}

    misc.set_deterministic(args.deterministic)
    log(f"Dataset {args.dataset}: {len(dataset)} environments, {dataset.num_classes} classes")
    for env, name in enumerate(dataset.environments):
        log(f"\tenv{env}: {name} ({len(dataset[env])} items)")
    test_envs, n_steps, checkpoint_freq = _schedule(args, dataset)
    log(f"n_steps = {n_steps}, checkpoint_freq = {checkpoint_freq}, test_envs = {test_envs}")

    fold_rows, rules = [], {}
    every_fold = folds(args, dataset)
    for index, fold in enumerate(every_fold):
        finished = checkpoint.finished(out_dir, fold) if resuming else None
        if finished is not None:
            log(f"[{layout.fold_tag(fold)}] finished earlier: skipped")
            rows, row_rules = finished["rows"], finished["row_rules"]
        else:
            settings = FoldSettings(
                algorithm=args.algorithm, test_envs=fold, n_steps=n_steps, checkpoint_freq=checkpoint_freq,
                seed=args.seed, trial_seed=args.trial_seed, holdout_fraction=args.holdout_fraction,
                evalmode=args.evalmode, device=device, model_save=args.model_save,
                out_dir=out_dir if distributed.is_main() else None,
                resume=resuming, keep_best=args.keep_best, tb_freq=args.tb_freq,
                split=args.split, split_dir=args.split_dir,
                later_steps=n_steps * (len(every_fold) - index - 1),  # later folds never start before this one ends
                earlier_steps=n_steps * index,
            )
            training.test_envs = fold
            if resuming and distributed.is_main():
                run_files.clear_failure(out_dir)  # the fold continues; failing again writes it anew
            records_path = layout.records_path(out_dir) if distributed.is_main() else None
            rows, row_rules, _, _ = train_fold(dataset, settings, hparams, log, records_path)
            training.test_envs = None
        if len(fold) == 1:  # the table reports the single folds; pair folds only feed collect_results' selection
            fold_rows.append(rows)
            rules.update(row_rules)
    return _write_table(args, out_dir, log, dataset, test_envs, fold_rows, rules)


def _write_table(args, out_dir, log, dataset, test_envs, fold_rows, rules) -> dict:
    env_names = [dataset.environments[env] for env in test_envs]
    table = report.build_table(fold_rows, env_names)
    text = report.format_table(table, env_names, rules)
    log("=== Summary ===")
    log(f"Algorithm: {args.algorithm}, dataset: {args.dataset}, output: {out_dir}")
    log(text)
    summary = {"dataset": args.dataset, "algorithm": args.algorithm, "environments": env_names,
               "test_envs": test_envs, "rows": table, "rules": {row: rules.get(row, "") for row in table},
               "notes": {key: text for key, text in rules.items() if key not in table}}
    if distributed.is_main():
        run_files.write_table(out_dir, text, summary)
    return {"out_dir": out_dir, **summary}
