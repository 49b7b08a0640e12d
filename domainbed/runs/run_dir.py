"""Run directories: OUTPUT_DIR/DATASET/TIMESTAMP_NAME, finding the one to resume, and its lock.

`--resume` without a directory continues the most recent run of the same name and dataset under
the output directory (and starts a new one when there is none, so the same command serves the
first launch and every relaunch of a preemptible job). A resumed run must have the same settings:
`compare_settings` lists what differs. While a process works in a run directory it holds an
exclusive lock on RUN_DIR/.lock, so a second process (a job launched twice, a requeued job whose
first copy still runs) stops with a clear error instead of interleaving its writes; the lock dies
with its process, SIGKILL included.
"""

import fcntl
import json
import os
import re
import time
from pathlib import Path

from domainbed import misc
from domainbed.errors import UsageError
from domainbed.runs import layout, run_files

TIMESTAMP = "%y%m%d_%H-%M-%S"
_STAMPED = re.compile(r"\d{6}_\d{2}-\d{2}-\d{2}_(?P<name>.+)")
# Arguments that may differ between a run and its resumption: where things are, not what is computed.
IGNORED_ON_RESUME = {"name", "resume", "output_dir", "data_dir", "dataset_title", "device", "show", "keep_best",
                     "tb_freq", "prebuild_loader", "configs", "download"}
# Arguments added after runs were saved: a saved run without one was computed with this value.
ADDED_ARGS = {"pair_folds": False}


def new_run_dir(output_dir, dataset: str, name: str) -> Path:
    return Path(output_dir) / dataset / f"{time.strftime(TIMESTAMP)}_{name}"


def latest_run_dir(output_dir, dataset: str, name: str) -> Path | None:
    """The most recent OUTPUT_DIR/DATASET/TIMESTAMP_NAME directory, or None."""
    parent = Path(output_dir) / dataset
    if not parent.is_dir():
        return None
    runs = [path for path in parent.iterdir()
            if path.is_dir() and (match := _STAMPED.fullmatch(path.name)) and match["name"] == name]
    return max(runs, key=lambda path: path.name) if runs else None


def resolve_run_dir(output_dir, dataset: str, name: str, resume) -> Path:
    """A new OUTPUT_DIR/DATASET/TIMESTAMP_NAME, or the run directory to continue: `resume` is
    None (a new run), True (the latest run of this name, or a new one) or a run directory."""
    if resume is None:
        return new_run_dir(output_dir, dataset, name)
    if resume is True:
        path = latest_run_dir(output_dir, dataset, name)
        if path is None:
            return new_run_dir(output_dir, dataset, name)
    else:
        path = Path(resume)
    missing = run_files.missing_settings(path)
    if missing:
        raise UsageError(f"--resume {path}: not a resumable run directory (no {' or '.join(missing)}); give a "
                         f"directory that train_all.py wrote, or leave out --resume for a new run")
    return path


def compare_settings(run_dir: Path, args: dict, hparams: dict, resumable_hparams=(), added_defaults=None) -> list:
    """['key: saved -> now', ...] for every argument and hparam that differs from the saved run.
    A run saved before a run setting existed lacks its key; that matches the setting's default,
    `added_defaults[key]`, which is what the run was computed with."""
    now_args = json.loads(misc.to_json(args))
    now_hparams = json.loads(misc.to_json(hparams))
    saved_args = run_files.read_args(run_dir)
    saved_hparams = run_files.read_hparams(run_dir)
    differences = []
    for key in sorted(set(saved_args) | set(now_args)):
        saved, now = saved_args.get(key, ADDED_ARGS.get(key)), now_args.get(key, ADDED_ARGS.get(key))
        if key not in IGNORED_ON_RESUME and saved != now:
            differences.append(f"--{key}: {saved_args.get(key)!r} -> {now_args.get(key)!r}")
    added_defaults = json.loads(misc.to_json(added_defaults or {}))
    for key in sorted(set(saved_hparams) | set(now_hparams)):
        saved = saved_hparams.get(key, added_defaults.get(key))
        if key not in resumable_hparams and saved != now_hparams.get(key):
            differences.append(f"hparam {key}: {saved!r} -> {now_hparams.get(key)!r}")
    return differences


class RunLock:
    """An exclusive, non-blocking lock on RUN_DIR/.lock for the life of the `with` block."""

    def __init__(self, run_dir):
        self.path = layout.lock_path(run_dir)
        self._fd = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise UsageError(f"run directory {self.path.parent} is in use by another process (it holds "
                             f"{self.path}); wait for it to finish or stop it") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
