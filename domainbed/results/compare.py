"""Our groups beside the published entries (collect_results --compare).

For every selection table, dataset and group: the published entries of the same method
(algorithm), dataset, selection method, averaging and quantization (an entry whose `variant` is
an ensemble or a weight average over runs is never a single group's match), per domain and on
average: ours mean +- SE (n), theirs +- spread (n), the gap, whether the gap lies inside the
combined noise, and every protocol difference. A group that no entry matches is listed as such.

The noise test is a two-sided z-test at 5 %: the gap is inside the noise when
|gap| < 1.96 sqrt(SE_ours^2 + SE_theirs^2). SE_ours is collect_results' (DomainBed's: np.std with
ddof 0 over sqrt(n)); a published SD becomes an SE with its number of trials; a spread of unstated
kind, or none, is not tested.
"""

import importlib
import math
from statistics import NormalDist

from domainbed.results.published import Published
from domainbed.results.tables import PLUS_MINUS, heading, render

Z_95 = NormalDist().inv_cdf(0.975)
NOISE_NOTE = ("Gap = ours - theirs (points). Inside noise: two-sided z-test at 5 %, z = |gap| / sqrt(SE_ours^2 + "
              "SE_theirs^2) < 1.96 (a published SD is divided by sqrt(its trials); an unstated spread is not tested). "
              "Protocol differences read ours vs theirs.")


def selection_of(method_name: str) -> tuple:
    """(selection, averaging) of one of collect_results' selection tables, in published.yaml's words."""
    averaged = " (averaged model), training-domain validation"
    if method_name.endswith(averaged):
        row = method_name[: -len(averaged)]
        return "training-domain", {"SWAD": "SWAD", "SMA": "SMA"}.get(row, row)
    if method_name.startswith("Leave-one-domain-out"):
        return "leave-one-domain-out", "none"
    if method_name.startswith("Test-domain validation"):
        return "oracle", "none"
    return "training-domain", "none"


def _dataset_class(name):
    importlib.import_module("domainbed.datasets")  # registers the datasets
    from domainbed.datasets.registry import get_dataset_class

    try:
        return get_dataset_class(name)
    except KeyError:
        return None


def _is_28_pixels(dataset_class) -> bool:
    from domainbed.datasets.mnist import MultipleEnvironmentMNIST

    if dataset_class is None:
        return False
    shape = getattr(dataset_class, "input_shape", None)
    return issubclass(dataset_class, MultipleEnvironmentMNIST) or (shape is not None and tuple(shape[1:3]) == (28, 28))


def _pretraining(backbone: str, hparams: dict) -> str:
    if not hparams.get("pretrained", True):
        return "none"
    if hparams.get("pretrained_path"):
        return "from a file"
    for prefix, name in (("swag", "SWAG"), ("clip", "CLIP"), ("dinov2", "DINOv2")):
        if backbone.lower().startswith(prefix):
            return name
    return "ImageNet"


def _one(values):
    values = sorted({str(value) for value in values})
    return values[0] if len(values) == 1 else "varies (" + ", ".join(values) + ")"


def our_protocol(runs) -> dict:
    """The protocol of a group's runs on one dataset, in published.yaml's keys (plus `subsample`)."""
    from domainbed.networks.domainbed_switches import selected_backbone

    dataset_class = _dataset_class(runs[0].registered_dataset)
    small = _is_28_pixels(dataset_class)
    backbones, pretrainings, sizes, steps, batches, splits, subsamples = [], [], [], [], [], [], []
    for run in runs:
        hparams = run.hparams
        backbone = "MNIST_CNN" if small else selected_backbone(hparams) if hparams else "unknown"
        backbones.append(backbone)
        pretrainings.append("none" if small else _pretraining(backbone, hparams) if hparams else "unknown")
        sizes.append(28 if small else hparams.get("image_size", "unknown"))
        steps.append(run.args.get("steps") or getattr(dataset_class, "N_STEPS", "unknown"))
        batches.append(hparams.get("batch_size", "unknown"))
        splits.append(run.args.get("split", "random"))
        subsamples.append(int(hparams.get("examples_per_domain", 0) or 0))
    draws = {}
    for run in runs:
        draws.setdefault(run.trial_seed, set()).add(run.hparams_seed)
    per_trial = max(len(seeds) for seeds in draws.values())
    all_seeds = set().union(*draws.values())
    if all_seeds == {0}:
        search = "defaults"
    elif 0 in all_seeds:
        search = f"defaults + {per_trial - 1} random draws"
    else:
        search = f"{per_trial} random draws"
    return {"backbone": _one(backbones), "pretraining": _one(pretrainings), "image_size": _one(sizes),
            "steps": _one(steps), "batch_size": _one(batches), "hparam_search": search, "split": _one(splits),
            "subsample": _one(subsamples)}


def _same(ours, theirs) -> bool:
    ours, theirs = str(ours).strip().lower(), str(theirs).strip().lower()
    return ours == theirs or theirs.startswith(ours + " ")


# hparams that the protocol columns, the averaging or the quantization already compare
COMPARED_HPARAMS = frozenset({"backbone", "pretrained", "image_size", "batch_size", "examples_per_domain", "swad",
                              "quant"})

LABELS = {"backbone": "backbone", "pretraining": "pretraining", "image_size": "image size", "steps": "steps",
          "batch_size": "batch size", "hparam_search": "hparams", "split": "split"}


def protocol_differences(ours: dict, entry: Published, trials: int, chosen_hparams: str, averaging: str) -> list:
    """Every way our runs differ from the entry's protocol, 'what ours vs theirs'."""
    theirs = entry.protocol
    differences = []
    for key, label in LABELS.items():
        if theirs.get(key) is None:
            differences.append(f"{label} {ours[key]} vs unstated")
        elif not _same(ours[key], theirs[key]):
            differences.append(f"{label} {ours[key]} vs {theirs[key]}")
    if ours["subsample"] not in ("0", 0):
        differences.append(f"{ours['subsample']} examples per domain vs the full data")
    if theirs.get("trials") is None:
        differences.append(f"trials {trials} vs unstated")
    elif theirs["trials"] != trials:
        differences.append(f"trials {trials} vs {theirs['trials']}")
    if entry.averaging == "unstated":
        differences.append(f"averaging {averaging} vs unstated")
    if chosen_hparams:
        differences.append(f"hparams set by hand: {chosen_hparams}")
    return differences


def _cell(mean, se, n, style) -> str:
    return f"{mean:.1f} {PLUS_MINUS[style]} {se:.1f} ({n})"


def _theirs(mean, spread, entry, style) -> str:
    if mean is None:
        return "-"
    trials = entry.protocol.get("trials")
    count = f" ({trials})" if trials is not None else ""
    if spread is None:
        return f"{mean:.1f}{count}"
    return f"{mean:.1f} {PLUS_MINUS[style]} {spread:.1f} {entry.protocol.get('spread')}{count}"


def noise_test(gap, se_ours, n_ours, se_theirs) -> str:
    if se_theirs is None:
        return "untested: no published SE"
    if n_ours < 2:
        return "untested: one seed of ours"
    combined = math.hypot(se_ours, se_theirs)
    if combined == 0:
        return "inside" if gap == 0 else "outside (no noise)"
    z = abs(gap) / combined
    # no "|" in a cell: it would split a Markdown table's column
    return f"{'inside' if z < Z_95 else 'outside'} (z={z:.2f})"


def matches(entries, algorithm, dataset, selection, averaging, quantized) -> list:
    return [entry for entry in entries
            if entry.variant is None and entry.method == algorithm and entry.dataset == dataset
            and entry.selection == selection and entry.averaging in (averaging, "unstated")
            and entry.quantized == quantized]


def compare_rows(results, method, dataset, group, entries, style) -> list:
    """The table rows of one group: per matched entry, one row per domain and one for the average."""
    runs = [run for run in results.complete if run.dataset == dataset and run.group == group]
    if not runs:
        return []
    selection, averaging = selection_of(method)
    algorithm, registered = runs[0].algorithm, runs[0].registered_dataset
    quantized = bool(runs[0].hparams.get("quant", False))
    chosen = " ".join(token for token in (group[len(algorithm):].split() if group.startswith(algorithm) else [])
                      if token.split("=")[0] not in COMPARED_HPARAMS)
    found = matches(entries, algorithm, registered, selection, averaging, quantized)
    if not found:
        what = f"{algorithm}{' quantized' if quantized else ''}, averaging {averaging}, {selection} selection"
        return [[group, "no published entry", "", "", "", "", "", f"none for {what} on {registered}"]]
    ours = our_protocol(runs)
    folds = results.folds[dataset]
    rows = []
    for entry in found:
        trials = results.seeds(method, dataset, group)
        differences = protocol_differences(ours, entry, trials, chosen, averaging)
        lines = []
        for fold in folds:
            cell = results.cell(method, dataset, group, fold)
            (env,) = fold if len(fold) == 1 else (None,)
            theirs = entry.domains[env] if entry.domains is not None and env is not None else None
            spread = entry.domain_spread[env] if entry.domain_spread is not None and env is not None else None
            lines.append((results.names[(dataset, fold)], cell, results.seeds(method, dataset, group, fold),
                          theirs, spread))
        lines.append(("Avg", results.summary_cell(method, dataset, group), trials, entry.average, entry.average_spread))
        for index, (domain, cell, n, theirs, spread) in enumerate(lines):
            ours_text = "-" if cell is None else _cell(100 * cell[0], 100 * cell[1], n, style)
            if cell is None or theirs is None:
                gap_text, noise = "-", "-"
            else:
                gap = 100 * cell[0] - theirs
                gap_text, noise = f"{gap:+.1f}", noise_test(gap, 100 * cell[1], n, entry.standard_error(spread))
            first = index == 0
            rows.append([group if first else "", entry.label if first else "", domain, ours_text,
                         _theirs(theirs, spread, entry, style), gap_text, noise,
                         ("; ".join(differences) or "none") if first else ""])
    return rows


HEADER = ["Group", "Published (source / protocol)", "Domain", "Ours mean ± SE (n)", "Theirs ± spread (n)", "Gap", "Inside noise?",
          "Protocol differences (ours vs theirs)"]


def format_compare(results, entries, style="text") -> str:
    from domainbed.results.notes import selection_note

    parts = [heading("Compared with published results (domainbed/results/published.yaml)", style)]
    sources = {entry.source_key: entry for entry in entries}
    used = set()
    for method in results.methods:
        parts.append(heading(method, style))
        for dataset in results.datasets():
            rows = [row for group in results.groups(dataset)
                    for row in compare_rows(results, method, dataset, group, entries, style)]
            used |= {row[1].split(" / ")[0] for row in rows if row[1].split(" / ")[0] in sources}
            header = [name.replace("±", PLUS_MINUS[style]) for name in HEADER]
            parts.append(render(f"{dataset} vs published", header, rows, style,
                                selection_note(method) + "\n" + NOISE_NOTE))
    bullet = "- " if style == "markdown" else "  "
    lines = [f"{bullet}{key}: {sources[key].citation}; {sources[key].source['file']} @ {sources[key].source['commit']}"
             for key in sorted(used)]
    parts.append(heading("Sources", style) + "\n" + ("\n".join(lines) or "(no entry matched)"))
    return "\n\n".join(parts) + "\n"
