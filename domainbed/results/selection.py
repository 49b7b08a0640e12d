"""Model selection from the per-checkpoint records of one fold, as SWAD and DomainBed report it.

The record rules (which checkpoint a selection method picks) are defined once here and shared by
the per-run table's rows below and by collect_results' DomainBed selection methods over runs.

Each row is a rule for picking one checkpoint and the number it reports. Only `iid` and
`last` are honest out-of-domain results; `oracle` (SWAD's oracle: the checkpoint of best
test-domain validation accuracy, unlike DomainBed's, which collect_results uses) peeks at the test
domain's held-out split and the `(inD)` rows measure in-domain accuracy. Every printed table carries these rules.
Ties go to the earliest checkpoint. `leave_one_domain_out` is DomainBed's third rule, which needs the
run's pair folds and so has no row in a run's table. A fold whose records hold a NaN or infinite number (a run
stops there, but older results may hold one) has no result: its every row is nan, never a number
picked by comparisons that NaN makes meaningless.
"""

import math
import re
from typing import Callable, NamedTuple

from domainbed.errors import UsageError
from domainbed.training.finite_numbers import nonfinite


def _best(records, key: str) -> dict:
    return max(records, key=lambda record: record[key])  # max keeps the first of equals: the earliest


def best_training_domain_validation(records) -> dict:
    """The checkpoint of best training-domain validation accuracy (`train_out`)."""
    return _best(records, "train_out")


def best_test_domain_validation(records) -> dict:
    """The checkpoint of best test-domain validation accuracy (`test_out`): an oracle."""
    return _best(records, "test_out")


def last_checkpoint(records) -> dict:
    return records[-1]


class Row(NamedTuple):
    """A table row: the rule in words, the checkpoint it picks, and the number of that record it reports."""

    rule: str
    checkpoint: Callable
    reports: str


ROWS = {
    "oracle": Row("test-domain accuracy at the checkpoint of best test-domain validation accuracy "
                  "(SWAD's oracle, which stops early; collect_results' is DomainBed's, the last checkpoint; "
                  "peeks at the test domain, not a result)", best_test_domain_validation, "test_in"),
    "iid": Row("test-domain accuracy at the checkpoint of best training-domain validation accuracy",
               best_training_domain_validation, "test_in"),
    "last": Row("test-domain accuracy at the last checkpoint", last_checkpoint, "test_in"),
    "last (inD)": Row("training-domain validation accuracy at the last checkpoint (in-domain)", last_checkpoint,
                      "train_out"),
    "iid (inD)": Row("best training-domain validation accuracy (in-domain)", best_training_domain_validation,
                     "train_out"),
}


def select(records) -> dict:
    """{row name: accuracy} for one fold's records (a list of dicts in step order)."""
    if not records:
        raise UsageError("no checkpoint records to select from: the fold evaluated nothing")
    missing = {"test_in", "test_out", "train_out"} - set(records[0])
    if missing:
        raise UsageError(f"records lack {', '.join(sorted(missing))}; selection needs test_in, test_out, train_out")
    if any(nonfinite(record) for record in records):
        return {name: math.nan for name in ROWS}
    return {name: row.checkpoint(records)[row.reports] for name, row in ROWS.items()}


def describe(row: str) -> str:
    """The rule behind a row name; rows added by other parts (averaging) describe themselves."""
    return ROWS[row].rule if row in ROWS else ""


_ENVIRONMENT = re.compile(r"env(\d+)_(?:in|out)$")


def leave_one_domain_out(records, pair_records: dict):
    """DomainBed's leave-one-domain-out cross-validation for the single fold of test environment i
    whose records are `records`: (validation accuracy, test accuracy) of its chosen checkpoint, or
    None when no checkpoint can be validated. `pair_records` is {j: the records of the fold holding
    out i and j}. A checkpoint (a step) is validated by the mean over the other environments j of
    fold (i, j)'s accuracy on environment j's `in` split at the same step, and the checkpoint of best
    validation is chosen (the earliest of equals); a step lacking a pair fold's record, as every step
    does while a pair fold is missing, cannot be validated. The environments are those the records
    evaluate, as DomainBed counts them. A non-finite number in any of these records leaves the fold
    without a result (None), as `select` does."""
    (test_env,) = records[0]["test_envs"]
    environments = sorted({int(match[1]) for key in records[0] if (match := _ENVIRONMENT.match(key))})
    others = [env for env in environments if env != test_env]
    held_out = {j: {record["step"]: record for record in pair_records.get(j, [])} for j in others}
    used = [*records, *(record for by_step in held_out.values() for record in by_step.values())]
    if any(nonfinite(record) for record in used):
        return None
    candidates = []
    for record in records:
        pair = [held_out[j].get(record["step"]) for j in others]
        if any(p is None or f"env{j}_in" not in p for j, p in zip(others, pair)):
            continue
        validation = sum(p[f"env{j}_in"] for j, p in zip(others, pair)) / len(others)
        candidates.append({"validation": validation, "test": record["test_in"]})
    if not candidates:
        return None
    best = _best(candidates, "validation")
    return best["validation"], best["test"]
