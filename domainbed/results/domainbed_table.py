"""DomainBed's collect_results layout: per selection method, one table per dataset (a row per
algorithm, a column per environment, `Avg`) and an `Averages` table across datasets, as
DomainBed prints them (fixed-width columns, or LaTeX with --latex), so a report of a DomainBed
sweep reads like DomainBed's own.

Rows follow DomainBed's ALGORITHMS order, then any other algorithm by first appearance; datasets
follow DomainBed's DATASETS order, then (where DomainBed would drop them) any other dataset by
name. Every algorithm of the sweep has a row in every dataset's table, `X` where it has no result.
"""

import numpy as np

# DomainBed's algorithms.ALGORITHMS and datasets.DATASETS, whose order its tables keep.
ALGORITHM_ORDER = (
    "ERM", "ERMPlusPlus", "Fish", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD", "DANN", "CDANN", "MTL",
    "SagNet", "ARM", "VREx", "RSC", "SD", "ANDMask", "SANDMask", "IGA", "SelfReg", "Fishr", "TRM", "IB_ERM",
    "IB_IRM", "CAD", "CondCAD", "Transfer", "CausIRL_CORAL", "CausIRL_MMD", "EQRM", "RDM", "ADRMX", "URM")
DATASET_ORDER = (
    "Debug28", "Debug224", "ColoredMNIST", "RotatedMNIST", "VLCS", "PACS", "OfficeHome", "TerraIncognita",
    "DomainNet", "SVIRO", "WILDSCamelyon", "WILDSFMoW", "SpawriousO2O_easy", "SpawriousO2O_medium",
    "SpawriousO2O_hard", "SpawriousM2M_easy", "SpawriousM2M_medium", "SpawriousM2M_hard")


def ordered(names, order) -> list:
    names = list(dict.fromkeys(names))
    return [name for name in order if name in names] + [name for name in names if name not in order]


def format_mean(values, latex: bool) -> tuple:
    """(mean %, standard error %, cell text) as DomainBed's format_mean; (None, None, "X") without values."""
    if not values:
        return None, None, "X"
    mean = 100 * np.mean(values)
    error = 100 * np.std(np.asarray(values) / np.sqrt(len(values)))
    plus_minus = "$\\pm$" if latex else "+/-"
    return mean, error, f"{mean:.1f} {plus_minus} {error:.1f}"


def _row(cells, width: int, latex: bool) -> str:
    text = (" & " if latex else "  ").join(str(cell).ljust(width)[:width] for cell in cells)
    return text + (" \\\\" if latex else " ")


def _table(rows, header_text: str, labels, width: int, latex: bool) -> list:
    lines = [""]
    if latex:
        lines += ["\\begin{center}", "\\adjustbox{max width=\\textwidth}{%",
                  "\\begin{tabular}{l" + "c" * (len(labels) - 1) + "}", "\\toprule"]
        labels = ["\\textbf{" + str(label).replace("%", "\\%") + "}" for label in labels]
    else:
        lines.append(f"-------- {header_text}")
    lines.append(_row(labels, width, latex))
    if latex:
        lines.append("\\midrule")
    lines += [_row(row, width, latex) for row in rows]
    if latex:
        lines += ["\\bottomrule", "\\end{tabular}}", "\\end{center}"]
    return lines


def _average(means) -> str:
    return "X" if None in means else f"{sum(means) / len(means):.1f}"


def method_tables(results, method: str, title: str, latex: bool) -> list:
    """The lines of one selection method's tables. `results` is collect_results' Results."""
    algorithms = ordered([run.group for run in results.complete], ALGORITHM_ORDER)
    datasets = ordered(sorted(results.folds), DATASET_ORDER)
    lines = []
    for dataset in datasets:
        folds = results.folds[dataset]
        if latex:
            lines += ["", f"\\subsubsection{{{dataset}}}"]
        rows = []
        for algorithm in algorithms:
            cells, means = [], []
            for fold in folds:
                mean, _, text = format_mean(list(results.trial_results(method, dataset, algorithm, fold).values()),
                                            latex)
                cells.append(text)
                means.append(mean)
            rows.append([algorithm, *cells, _average(means)])
        labels = ["Algorithm", *(results.names[(dataset, fold)] for fold in folds), "Avg"]
        lines += _table(rows, f"Dataset: {dataset}, model selection method: {title}", labels, 20, latex)
    if latex:
        lines += ["", "\\subsubsection{Averages}"]
    rows = []
    for algorithm in algorithms:
        cells, means = [], []
        for dataset in datasets:
            mean, _, text = format_mean(list(results.trial_averages(method, dataset, algorithm).values()), latex)
            cells.append(text)
            means.append(mean)
        rows.append([algorithm, *cells, _average(means)])
    lines += _table(rows, f"Averages, model selection method: {title}", ["Algorithm", *datasets, "Avg"], 25, latex)
    return lines


def format_report(results, titles: dict, n_records: int, latex: bool = False, unfinished=()) -> str:
    """DomainBed's whole report: `titles` maps each of results.methods to DomainBed's name for it."""
    if latex:
        lines = ["\\documentclass{article}", "\\usepackage{booktabs}", "\\usepackage{adjustbox}",
                 "\\begin{document}", "\\section{Full DomainBed results}", f"% Total records: {n_records}"]
    else:
        lines = [f"Total records: {n_records}"]
    for method in results.methods:
        if latex:
            lines += ["", f"\\subsection{{Model selection: {titles[method]}}}"]
        lines += method_tables(results, method, titles[method], latex)
    if unfinished:
        comment = "% " if latex else ""
        lines += ["", f"{comment}Jobs without `done` (still running or failed), counted as DomainBed counts them:",
                  *(f"{comment}  {path}" for path in unfinished)]
    if latex:
        lines.append("\\end{document}")
    return "\n".join(lines) + "\n"
