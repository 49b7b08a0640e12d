"""Model selection from the per-checkpoint records of one fold, as SWAD and DomainBed report it.

The record rules (which checkpoint a selection method picks) are defined once here and shared by
the per-run table's rows below and by collect_results' DomainBed selection methods over runs.

Each row is a rule for picking one checkpoint and the number it reports. Only `iid` and
`last` are honest out-of-domain results; `oracle` (SWAD's oracle: the checkpoint of best
test-domain validation accuracy, unlike DomainBed's, which collect_results uses) peeks at the test
domain's held-out split and the `(inD)` rows measure in-domain accuracy. Every printed table carries these rules.
Ties go to the earliest checkpoint. A fold whose records hold a NaN or infinite number (a run
stops there, but older results may hold one) has no result: its every row is nan, never a number
picked by comparisons that NaN makes meaningless.
"""

import math
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
