"""Reading and writing a run directory's own files: settings, records and the final table.

The paths come from domainbed/runs/layout.py. Writes are atomic (`misc.atomic_write_text`), so a
reader, or a crash at any moment, sees a file whole or not at all. Readers give one-line
`UsageError`s naming the file for what a user can point a tool at by mistake.
"""

import json
from pathlib import Path

from domainbed import misc
from domainbed.errors import UsageError
from domainbed.runs import layout


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist; is {path.parent} a run directory written by train_all.py?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from None


def write_settings(run_dir, args: dict, hparams: dict) -> None:
    """args.json and hparams.json: what the tools and `--resume` read back."""
    misc.atomic_write_text(layout.args_path(run_dir), misc.to_json(args, indent=2, sort_keys=True))
    misc.atomic_write_text(layout.hparams_path(run_dir), misc.to_json(hparams, indent=2, sort_keys=True))


def read_args(run_dir) -> dict:
    return read_json(layout.args_path(run_dir))


def read_hparams(run_dir) -> dict:
    return read_json(layout.hparams_path(run_dir))


def missing_settings(run_dir) -> list:
    """The settings files `run_dir` lacks (empty when it can be resumed)."""
    return [path.name for path in (layout.args_path(run_dir), layout.hparams_path(run_dir)) if not path.is_file()]


def record_line(record: dict) -> str:
    """A record as its line of results.jsonl."""
    return misc.to_json(record, sort_keys=True) + "\n"


def append_record(records_path, record: dict) -> None:
    """Append one record to results.jsonl (`layout.records_path`), atomically: a crash leaves the
    file with or without it, whole."""
    path = Path(records_path)
    previous = path.read_bytes() if path.exists() else b""
    misc.atomic_write_bytes(path, previous + record_line(record).encode())


def read_records(run_dir) -> dict:
    """{fold (tuple of test environments): its records in step order} from results.jsonl."""
    path = layout.records_path(run_dir)
    records = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip():
            record = json.loads(line)
            records.setdefault(tuple(record["test_envs"]), []).append(record)
    for fold_records in records.values():
        fold_records.sort(key=lambda record: record["step"])
    return records


def write_table(run_dir, text: str, summary: dict) -> None:
    """table.txt (the table as printed) and table.json (`summary`: rows, rules, environments)."""
    misc.atomic_write_text(layout.table_text_path(run_dir), text + "\n")
    misc.atomic_write_text(layout.table_json_path(run_dir), misc.to_json(summary, indent=2))


def read_table(run_dir) -> dict | None:
    """table.json of a finished run, or None while the run has not finished."""
    path = layout.table_json_path(run_dir)
    return json.loads(path.read_text()) if path.exists() else None


def write_failure(run_dir, error: str, test_envs, last_saved_step: int | None) -> None:
    """failed.json: the run stopped on `error` (one line) in the fold of `test_envs`, whose last
    checkpoint is `last_saved_step` (None: it saved none). The sweep's `status` reads it."""
    failure = {"error": error, "fold": layout.fold_tag(test_envs), "test_envs": list(test_envs),
               "last_saved_step": last_saved_step}
    misc.atomic_write_text(layout.failed_path(run_dir), misc.to_json(failure, indent=2))


def read_failure(run_dir) -> dict | None:
    """failed.json of a run that stopped on an error, or None."""
    path = layout.failed_path(run_dir)
    return read_json(path) if path.is_file() else None


def clear_failure(run_dir) -> None:
    layout.failed_path(run_dir).unlink(missing_ok=True)
