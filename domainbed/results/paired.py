"""Paired statistics across methods run on the same trial seeds (collect_results --paired).

Two groups trained on the same trial seeds share their data splits, so their difference is
measured per seed: d_s = acc_B(s) - acc_A(s) for every seed s both have. Reported: the mean of
d, its standard error SD(d) / sqrt(n) with the sample SD (ddof 1: the paired t convention, unlike
the DomainBed tables' ddof 0), and a percentile bootstrap confidence interval of the mean
(BOOTSTRAP_RESAMPLES resamples of the n seeds with replacement, numpy's default_rng(BOOTSTRAP_SEED),
so the interval is reproducible). With n < 2 there is no SD and only the mean is given.

Seeds needed: the normal-approximation sample size of a two-sided paired test at level alpha
with the given power, n = ceil(((z_{1-alpha/2} + z_power) SD(d) / delta)^2), from the observed
SD(d): how many trial seeds make a true difference delta detectable.

The averages table is DomainBed's (every group, every dataset, their mean) with each group's rank
per dataset (1: best; ties share the mean of their ranks) and its mean rank over the datasets.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from domainbed.results.tables import PLUS_MINUS, heading, render

BOOTSTRAP_RESAMPLES = 10000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
ALPHA, POWER = 0.05, 0.8


@dataclass
class Paired:
    n: int
    mean: float
    sd: float | None  # sample SD of the per-seed differences (ddof 1), None for n < 2
    se: float | None
    low: float | None  # bootstrap interval of the mean
    high: float | None


def paired_difference(a: dict, b: dict, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, level=LEVEL):
    """b - a over the seeds both {seed: value} have, or None when they share none."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.array([b[s] - a[s] for s in seeds], dtype=float)
    n = len(d)
    if n < 2:
        return Paired(n, float(d.mean()), None, None, None, None)
    sd = float(d.std(ddof=1))
    low, high = bootstrap_interval(d, resamples, seed, level)
    return Paired(n, float(d.mean()), sd, sd / math.sqrt(n), low, high)


def bootstrap_interval(d, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, level=LEVEL) -> tuple:
    d = np.asarray(d, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[picks].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def seeds_needed(sd, delta, alpha=ALPHA, power=POWER) -> int | None:
    """Trial seeds for a paired difference `delta` to be detected, given the SD of the differences."""
    if sd is None or delta == 0:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return max(2, math.ceil((z * sd / abs(delta)) ** 2))


def ranks(values: dict) -> dict:
    """{name: rank}, 1 for the highest value, tied values sharing the mean of their ranks."""
    ordered = sorted(values, key=lambda name: -values[name])
    result = {}
    position = 0
    while position < len(ordered):
        tied = [name for name in ordered if values[name] == values[ordered[position]]]
        rank = position + (len(tied) + 1) / 2
        for name in tied:
            result[name] = rank
        position += len(tied)
    return result


def overall_averages(results, method, group) -> dict:
    """{trial seed: the mean over the datasets of the trial's dataset averages}, trials with every dataset."""
    per_dataset = [results.trial_averages(method, dataset, group) for dataset in results.datasets()]
    trials = set.intersection(*(set(values) for values in per_dataset)) if per_dataset else set()
    return {trial: float(np.mean([values[trial] for values in per_dataset])) for trial in sorted(trials)}


def default_baseline(results) -> str | None:
    """The plain ERM group, else any ERM group, else the first group."""
    groups = results.groups()
    erm = [group for group in groups if group.split()[0] == "ERM"]
    return "ERM" if "ERM" in groups else erm[0] if erm else groups[0] if groups else None


def _points(value) -> str:
    return "-" if value is None else f"{100 * value:+.2f}"


def _seeds(value) -> str:
    return "-" if value is None else str(value)


def paired_rows(results, method, baseline, effect, style) -> list:
    rows = []
    columns = [*results.datasets(), "Avg"]
    for group in results.groups():
        if group == baseline:
            continue
        for column in columns:
            if column == "Avg":
                a, b = overall_averages(results, method, baseline), overall_averages(results, method, group)
            else:
                a = results.trial_averages(method, column, baseline)
                b = results.trial_averages(method, column, group)
            stats = paired_difference(a, b)
            if stats is None:
                rows.append([f"{group} - {baseline}", column, "0", "no common trial seeds", "-", "-", "-"])
                continue
            mean = f"{100 * stats.mean:+.2f}" + ("" if stats.se is None else f" {PLUS_MINUS[style]} {100 * stats.se:.2f}")
            interval = "-" if stats.low is None else f"[{_points(stats.low)}, {_points(stats.high)}]"
            rows.append([f"{group} - {baseline}", column, str(stats.n), mean, interval,
                         _seeds(seeds_needed(stats.sd, effect / 100)), _seeds(seeds_needed(stats.sd, stats.mean))])
    return rows


def averages_rows(results, method, style) -> list:
    datasets = results.datasets()
    cells = {(group, dataset): results.summary_cell(method, dataset, group)
             for group in results.groups() for dataset in datasets}
    dataset_ranks = {dataset: ranks({group: cells[(group, dataset)][0] for group in results.groups()
                                     if cells[(group, dataset)] is not None}) for dataset in datasets}
    rows = []
    for group in results.groups():
        row, group_ranks = [group], []
        for dataset in datasets:
            cell = cells[(group, dataset)]
            if cell is None:
                row.append("X")
                continue
            rank = dataset_ranks[dataset][group]
            group_ranks.append(rank)
            row.append(f"{100 * cell[0]:.1f} {PLUS_MINUS[style]} {100 * cell[1]:.1f} (#{rank:g})")
        complete = len(group_ranks) == len(datasets)
        average = float(np.mean([cells[(group, d)][0] for d in datasets])) if complete else None
        row.append("X" if average is None else f"{100 * average:.1f}")
        row.append("X" if not complete else f"{np.mean(group_ranks):.2f}")
        rows.append(row)
    return rows


def format_paired(results, baseline=None, effect=1.0, style="text") -> str:
    """The averages table with ranks and the paired differences against `baseline`, per selection
    method; `effect`: the difference (points) whose seeds-needed column is given."""
    from domainbed.results.notes import AVERAGES_NOTE, selection_note

    baseline = baseline or default_baseline(results)
    parts = [heading(f"Paired statistics against {baseline}", style)]
    for method in results.methods:
        parts.append(heading(method, style))
        header = ["Algorithm", *results.datasets(), "Avg", "Mean rank"]
        parts.append(render("Averages with ranks (#: rank on the dataset)", header,
                            averages_rows(results, method, style), style,
                            selection_note(method) + "\n" + AVERAGES_NOTE))
        header = ["Difference", "Dataset", "Seeds", f"Mean {PLUS_MINUS[style]} SE (points)",
                  f"{LEVEL:.0%} bootstrap CI", f"Seeds for {effect:g} pt", "Seeds for observed"]
        note = (f"Per trial seed shared by both groups: d = group - {baseline} of the trial's average over the domains "
                f"(Avg: over the datasets too); SE from the sample SD (ddof 1); percentile bootstrap of the mean, "
                f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}. Seeds needed: two-sided paired test, "
                f"alpha {ALPHA}, power {POWER}, from the observed SD of d.")
        parts.append(render(f"Paired differences against {baseline}", header,
                            paired_rows(results, method, baseline, effect, style), style,
                            selection_note(method) + "\n" + note))
    return "\n\n".join(parts) + "\n"
