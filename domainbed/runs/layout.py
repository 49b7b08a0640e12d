"""Where everything of a run lives: the one module that spells the run directory's file names.

    RUN_DIR/
      args.json                 the run's arguments (train_all.py's flags, resolved)
      hparams.json              its hparams
      log.txt                   everything the run printed
      results.jsonl             one record per checkpoint and fold
      table.txt, table.json     the final table, as printed and as data
      models/TE{i}_final.pth    each fold's final model (domainbed/runs/model_io.py)
      models/compact/TE{i}_final.pth   a quantized fold's packed model (domainbed/quant/)
      resume/TE{i}_step{N}.pth  resume checkpoints; resume/TE{i}_done.json marks a finished fold
      checkpoints/TE{i}_{N}.pth `--model_save` snapshots
      tensorboard/TE{i}/        TensorBoard events
      failed.json               a fold failed: the error line, the fold, its last saved step
                                (a resumed run removes it once the fold continues)
      .lock                     held by the process working in the directory

A fold is named by its test environments: `fold_tag([0])` is "TE0", `fold_tag([0, 1])` "TE0,1".
Nothing here touches the disk but `is_run_dir`, `has_progress` and `final_models`; readers and writers of the
files are in domainbed/runs/run_files.py.
"""

import re
from pathlib import Path

ARGS = "args.json"
HPARAMS = "hparams.json"
LOG = "log.txt"
RECORDS = "results.jsonl"
TABLE_TEXT = "table.txt"
TABLE_JSON = "table.json"
LOCK = ".lock"
MODELS = "models"
COMPACT_MODELS = "compact"
RESUME = "resume"
SNAPSHOTS = "checkpoints"
TENSORBOARD = "tensorboard"
FAILED = "failed.json"

_FINAL_MODEL = re.compile(r"TE(\d+)_final\.pth")
_PROGRESS = re.compile(r"TE[\d,]+_(step\d+\.pth|done\.json)")


def fold_tag(test_envs) -> str:
    return "TE" + ",".join(map(str, test_envs))


def args_path(run_dir) -> Path:
    return Path(run_dir) / ARGS


def hparams_path(run_dir) -> Path:
    return Path(run_dir) / HPARAMS


def log_path(run_dir) -> Path:
    return Path(run_dir) / LOG


def records_path(run_dir) -> Path:
    return Path(run_dir) / RECORDS


def table_text_path(run_dir) -> Path:
    return Path(run_dir) / TABLE_TEXT


def table_json_path(run_dir) -> Path:
    return Path(run_dir) / TABLE_JSON


def lock_path(run_dir) -> Path:
    return Path(run_dir) / LOCK


def models_dir(run_dir) -> Path:
    return Path(run_dir) / MODELS


def final_model_path(run_dir, test_envs) -> Path:
    return models_dir(run_dir) / f"{fold_tag(test_envs)}_final.pth"


def compact_model_path(run_dir, test_envs) -> Path:
    return models_dir(run_dir) / COMPACT_MODELS / f"{fold_tag(test_envs)}_final.pth"


def resume_dir(run_dir) -> Path:
    return Path(run_dir) / RESUME


def checkpoint_path(run_dir, test_envs, step: int) -> Path:
    return resume_dir(run_dir) / f"{fold_tag(test_envs)}_step{step}.pth"


def checkpoint_pattern(test_envs) -> re.Pattern:
    """Matches the file names of the fold's resume checkpoints; group 1 is the step."""
    return re.compile(re.escape(fold_tag(test_envs)) + r"_step(\d+)\.pth")


def done_path(run_dir, test_envs) -> Path:
    return resume_dir(run_dir) / f"{fold_tag(test_envs)}_done.json"


def snapshot_path(run_dir, test_envs, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"{fold_tag(test_envs)}_{step}.pth"


def tensorboard_dir(run_dir, test_envs) -> Path:
    return Path(run_dir) / TENSORBOARD / fold_tag(test_envs)


def failed_path(run_dir) -> Path:
    return Path(run_dir) / FAILED


def is_run_dir(path) -> bool:
    """Whether `path` holds a run's arguments (a directory train_all.py wrote)."""
    return args_path(path).is_file()


def has_progress(run_dir) -> bool:
    """Whether `run_dir` holds something `--resume` continues from: a fold's checkpoint or a
    finished fold's marker."""
    folder = resume_dir(run_dir)
    return folder.is_dir() and any(_PROGRESS.fullmatch(path.name) for path in folder.iterdir())


def final_models(run_dir) -> dict:
    """{test environment: final model file} of the single-domain folds saved in `run_dir`."""
    folder = models_dir(run_dir)
    files = sorted(folder.glob("TE*_final.pth")) if folder.is_dir() else []
    return {int(match[1]): path for path in files if (match := _FINAL_MODEL.fullmatch(path.name))}
