"""The one line under every printed table that says which number is the paper's and which is not."""

TRAIN_ALL_NOTE = ("The paper's number: row `iid` (training-domain validation, as SWAD's and DomainBed's tables), or "
                  "`SWAD`/`SMA` for an averaged run. Not a result: `oracle` peeks at the test domain, `last` is no "
                  "selection, `(inD)` rows are in-domain accuracy.")

_NOTES = {
    "training-domain": "The paper's number: training-domain validation, the selection of DomainBed's main tables and "
                       "SWAD's. (Test-domain validation peeks at the test domain; `last` is no selection.)",
    "leave-one-domain-out": "Not the usual paper's number: leave-one-domain-out is DomainBed's second selection table; "
                            "compare it with that table only (the main tables use training-domain validation).",
    "oracle": "Not the paper's number: test-domain validation (oracle) peeks at the test domain; compare it only "
              "with published oracle tables, never with a method's headline result.",
}


def selection_note(method_name: str) -> str:
    """The line under a collect_results table of selection method `method_name`."""
    from domainbed.results.compare import selection_of

    selection, averaging = selection_of(method_name)
    if averaging != "none":
        return (f"The paper's number for {averaging}: the averaged model, validated on the training domains (SWAD's "
                f"tables); the non-averaged run of the same group is in the training-domain validation table.")
    return _NOTES[selection]


def under(table: str, note: str, style: str) -> str:
    """`note` on the line under `table`; Markdown and LaTeX need a blank line, lest it join the table."""
    return table + ("\n" if style == "text" else "\n\n") + note


AVERAGES_NOTE = ("Each cell: the mean +- SE over trial seeds of a trial's average over the domains, as DomainBed's "
                 "'Averages' table; compare the training-domain validation rows with papers.")
