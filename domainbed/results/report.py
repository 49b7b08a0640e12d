"""The final table, as SWAD prints it: `Selection`, one column per test domain (its environment
folder name), `Avg.`; one row per selection rule in SWAD's order; cells formatted `{:.3%}`.
Under it: what each row reports, notes, and the line saying which row is the paper's number.
A NaN or infinite cell (a fold whose records hold one, see selection.py) prints as `nan`, and a
note under the table says it is no result."""

import math

from prettytable import PrettyTable

from domainbed.results.notes import TRAIN_ALL_NOTE

NONFINITE_NOTE = ("a row rests on a NaN or infinite number in the records (results.jsonl): "
                  "it is no result; lower the lr or check the inputs and rerun")


def build_table(fold_rows, env_names) -> dict:
    """{row: {env name: accuracy, "Avg.": mean}} from one {row: accuracy} dict per fold.

    A row that some fold lacks (an averaging row when a fold never converged, say) is left
    out of the average rather than averaged over fewer domains."""
    table = {}
    for row in dict.fromkeys(name for rows in fold_rows for name in rows):
        values = {env: rows[row] for env, rows in zip(env_names, fold_rows) if row in rows}
        if len(values) == len(env_names):
            values["Avg."] = sum(values.values()) / len(values)
        table[row] = values
    return table


def _cell(value: float) -> str:
    return f"{value:.3%}" if math.isfinite(value) else "nan"


def format_table(table: dict, env_names, rules: dict) -> str:
    """The table, the rule of each row, and run-wide notes (rules under keys that are no row,
    such as the quantized model's size)."""
    pretty = PrettyTable(["Selection", *env_names, "Avg."])
    pretty.align["Selection"] = "l"
    for row, values in table.items():
        cells = [_cell(values[key]) if key in values else "-" for key in [*env_names, "Avg."]]
        pretty.add_row([row, *cells])
    legend = [f"  {row}: {rules[row]}" for row in table if rules.get(row)]
    notes = [f"  {key}: {text}" for key, text in rules.items() if key not in table and text]
    if any(not math.isfinite(value) for values in table.values() for value in values.values()):
        notes.append(f"  nan: {NONFINITE_NOTE}")
    return "\n".join([pretty.get_string(), "What each row reports (test-domain accuracy; (inD): training-domain validation accuracy):", *legend,
                      *(["Notes:", *notes] if notes else []), TRAIN_ALL_NOTE])
