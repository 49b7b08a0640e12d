"""Model-selection rows from the per-checkpoint records of one fold, as SWAD reports them.

Each row is a rule for picking one checkpoint and the number it reports. Only `iid` and
`last` are honest out-of-domain results; `oracle` peeks at the test domain's held-out split
and the `(inD)` rows measure in-domain accuracy. Every printed table carries these rules.
Ties go to the earliest checkpoint.
"""

from domainbed.errors import UsageError


def _argmax(records, key):
    return max(records, key=lambda record: record[key])


ROWS = {
    "oracle": (
        "test-domain accuracy at the checkpoint of best test-domain validation accuracy "
        "(oracle: peeks at the test domain, not a result)",
        lambda records: _argmax(records, "test_out")["test_in"],
    ),
    "iid": (
        "test-domain accuracy at the checkpoint of best training-domain validation accuracy",
        lambda records: _argmax(records, "train_out")["test_in"],
    ),
    "last": (
        "test-domain accuracy at the last checkpoint",
        lambda records: records[-1]["test_in"],
    ),
    "last (inD)": (
        "training-domain validation accuracy at the last checkpoint (in-domain)",
        lambda records: records[-1]["train_out"],
    ),
    "iid (inD)": (
        "best training-domain validation accuracy (in-domain)",
        lambda records: _argmax(records, "train_out")["train_out"],
    ),
}


def select(records) -> dict:
    """{row name: accuracy} for one fold's records (a list of dicts in step order)."""
    if not records:
        raise UsageError("no checkpoint records to select from: the fold evaluated nothing")
    missing = {"test_in", "test_out", "train_out"} - set(records[0])
    if missing:
        raise UsageError(f"records lack {', '.join(sorted(missing))}; selection needs test_in, test_out, train_out")
    return {name: rule(records) for name, (_, rule) in ROWS.items()}


def describe(row: str) -> str:
    """The rule behind a row name; rows added by other parts (averaging) describe themselves."""
    return ROWS[row][0] if row in ROWS else ""
