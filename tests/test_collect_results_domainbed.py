"""collect_results on DomainBed's own sweep directories: every cell against DomainBed's rules,
recomputed here from DomainBed's records independently of this project's code (the arithmetic of
DomainBed's model_selection.py and collect_results.py, re-derived)."""

import itertools
import json
import random
import shutil

import numpy as np
import pytest

from domainbed.results import domainbed_runs
from domainbed.scripts import collect_results as cr

DATASET, N_ENVS, STEPS = "Debug28", 3, (0, 100, 200)
ALGORITHMS, HPARAMS_SEEDS, TRIAL_SEEDS = ("IRM", "ERM"), (0, 1), (0, 1)
FOLDS = [(i,) for i in range(N_ENVS)] + list(itertools.combinations(range(N_ENVS), 2))
TIE = ("ERM", 0, 1)  # (algorithm, trial seed, env): jobs holding the env out write the same numbers for both hparams seeds
NOT_DONE = ("IRM", 1, 0, (2,))  # (algorithm, hparams seed, trial seed, fold): a job without `done`
METHODS = {"training-domain validation set": cr.TRAINING_DOMAIN,
           "leave-one-domain-out cross-validation": cr.LEAVE_ONE_OUT,
           "test-domain validation set (oracle)": cr.ORACLE}


def job_records(algorithm, hparams_seed, trial_seed, fold, output_dir):
    tied = (algorithm, trial_seed) == TIE[:2] and TIE[2] in fold
    numbers_seed = (algorithm, 0 if tied else hparams_seed, trial_seed, fold)
    rng = random.Random(str(numbers_seed))
    records = []
    for step in STEPS:
        record = {"args": {"dataset": DATASET, "algorithm": algorithm, "test_envs": list(fold),
                           "hparams_seed": hparams_seed, "trial_seed": trial_seed, "output_dir": str(output_dir),
                           "holdout_fraction": 0.2, "task": "domain_generalization"},
                  "hparams": {"lr": 1e-3 * (1 + hparams_seed), "batch_size": 8 + trial_seed},
                  "step": step, "epoch": step / 10, "loss": rng.random(), "mem_gb": 0.1, "step_time": 0.01}
        for i in range(N_ENVS):
            # twentieths: ties between checkpoints and between candidates happen, as with small splits
            record[f"env{i}_in_acc"] = rng.randrange(21) / 20
            record[f"env{i}_out_acc"] = rng.randrange(21) / 20
        records.append(record)
    return records


def write_sweep(root, not_done=None):
    """A job directory per (algorithm, hparams seed, trial seed, fold), each with `done` but `not_done`'s."""
    for n, (algorithm, hparams_seed, trial_seed, fold) in enumerate(
            itertools.product(ALGORITHMS, HPARAMS_SEEDS, TRIAL_SEEDS, FOLDS)):
        job = root / f"{n:03d}_{algorithm}_h{hparams_seed}_t{trial_seed}_te{''.join(map(str, fold))}"
        job.mkdir()
        lines = [json.dumps(record) for record in job_records(algorithm, hparams_seed, trial_seed, fold, job)]
        (job / "results.jsonl").write_text("\n".join(lines) + "\n")
        if (algorithm, hparams_seed, trial_seed, fold) != not_done:
            (job / "done").write_text("done")
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("domainbed_sweep"), NOT_DONE)


# DomainBed's rules, recomputed from its records


def load_records(root):
    records = []
    for job in sorted(root.iterdir()):
        path = job / "results.jsonl"
        if path.is_file():
            records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def environments(record):
    return next(i for i in itertools.count() if f"env{i}_out_acc" not in record)


def training_domain(run):
    """Best mean training-domain `out` accuracy over the single-test-env records (first of equals)."""
    single = [r for r in run if len(r["args"]["test_envs"]) == 1]
    if not single:
        return None
    best = None
    for r in single:
        (test_env,) = r["args"]["test_envs"]
        val = np.mean([r[f"env{i}_out_acc"] for i in range(environments(r)) if i != test_env])
        if best is None or val > best[0]:
            best = (val, r[f"env{test_env}_in_acc"])
    return best


def leave_one_out(run):
    """Per step: the mean over the other environments j of the pair job (i, j)'s env j `in`
    accuracy; the step of best mean (first of equals); steps lacking a pair are skipped."""
    best = None
    for step in sorted({r["step"] for r in run}):
        at_step = [r for r in run if r["step"] == step]
        single = [r for r in at_step if len(r["args"]["test_envs"]) == 1]
        if len(single) != 1:
            continue
        (test_env,) = single[0]["args"]["test_envs"]
        n = environments(at_step[0])
        val_accs = {}
        for r in at_step:
            if len(r["args"]["test_envs"]) == 2:
                (j,) = set(r["args"]["test_envs"]) - {test_env}
                val_accs[j] = r[f"env{j}_in_acc"]
        if set(val_accs) != set(range(n)) - {test_env}:
            continue
        val = np.sum(list(val_accs.values())) / (n - 1)
        if best is None or val > best[0]:
            best = (val, single[0][f"env{test_env}_in_acc"])
    return best


def oracle(run):
    """The last step's test-domain `out` (validation) and `in` (test) accuracies."""
    single = [r for r in run if len(r["args"]["test_envs"]) == 1]
    if not single:
        return None
    last = sorted(single, key=lambda r: r["step"])[-1]
    (test_env,) = last["args"]["test_envs"]
    return last[f"env{test_env}_out_acc"], last[f"env{test_env}_in_acc"]


RULES = {cr.TRAINING_DOMAIN: training_domain, cr.LEAVE_ONE_OUT: leave_one_out, cr.ORACLE: oracle}


def sweep_accs(records, method):
    """{(algorithm, trial seed, test env): (chosen hparams seed, test accuracy)}: per group of
    records holding the test env, the hparams seed of best validation, of equals the highest."""
    groups = {}
    for r in records:
        for test_env in r["args"]["test_envs"]:
            groups.setdefault((r["args"]["algorithm"], r["args"]["trial_seed"], test_env), []).append(r)
    result = {}
    for key, group in groups.items():
        by_seed = {}
        for r in group:
            by_seed.setdefault(r["args"]["hparams_seed"], []).append(r)
        accs = [(seed, RULES[method](by_seed[seed])) for seed in sorted(by_seed)]
        accs = [(seed, acc) for seed, acc in accs if acc is not None]
        if accs:
            best_val = max(acc[0] for _, acc in accs)
            seed, acc = [(seed, acc) for seed, acc in accs if acc[0] == best_val][-1]
            result[key] = (seed, acc[1])
    return result


def cell(values):
    if not values:
        return None, "X"
    mean, err = 100 * np.mean(values), 100 * np.std(np.array(values) / np.sqrt(len(values)))
    return mean, f"{mean:.1f} +/- {err:.1f}"


def row(cells, width):
    return "  ".join(str(c).ljust(width)[:width] for c in cells) + " "


def expected_tables(records, method, name):
    accs = sweep_accs(records, method)
    algorithms = ["ERM", "IRM"]  # DomainBed's ALGORITHMS order
    lines = [f"-------- Dataset: {DATASET}, model selection method: {name}",
             row(["Algorithm", "0", "1", "2", "Avg"], 20)]
    for algorithm in algorithms:
        cells = [cell([accs[(algorithm, t, e)][1] for t in TRIAL_SEEDS if (algorithm, t, e) in accs])
                 for e in range(N_ENVS)]
        means = [mean for mean, _ in cells]
        average = "X" if None in means else f"{sum(means) / len(means):.1f}"
        lines.append(row([algorithm, *(text for _, text in cells), average], 20))
    lines += ["", f"-------- Averages, model selection method: {name}", row(["Algorithm", DATASET, "Avg"], 25)]
    for algorithm in algorithms:
        trials = [np.mean([accs[(algorithm, t, e)][1] for e in range(N_ENVS) if (algorithm, t, e) in accs])
                  for t in TRIAL_SEEDS if any((algorithm, t, e) in accs for e in range(N_ENVS))]
        mean, text = cell(trials)
        lines.append(row([algorithm, text, "X" if mean is None else f"{mean:.1f}"], 25))
    return lines


# The tests


def test_every_choice_follows_domainbeds_rules(sweep):
    records = load_records(sweep)
    results = cr.collect_domainbed(domainbed_runs.read_sweep(sweep))
    assert results.methods == [cr.TRAINING_DOMAIN, cr.LEAVE_ONE_OUT, cr.ORACLE]
    for method in results.methods:
        expected = sweep_accs(records, method)
        assert len(expected) == len(ALGORITHMS) * len(TRIAL_SEEDS) * N_ENVS
        for (algorithm, trial_seed, test_env), (seed, test) in expected.items():
            choice = results.choices[(method, DATASET, algorithm, trial_seed, (test_env,))]
            assert (choice.run.hparams_seed, choice.test) == (seed, test), (method, algorithm, trial_seed, test_env)
        assert len([key for key in results.choices if key[0] == method]) == len(expected)


def test_a_tie_goes_to_the_highest_hparams_seed(sweep):
    results = cr.collect_domainbed(domainbed_runs.read_sweep(sweep))
    algorithm, trial_seed, env = TIE
    for method in results.methods:
        assert results.choices[(method, DATASET, algorithm, trial_seed, (env,))].run.hparams_seed == 1


def test_report_prints_every_cell_in_domainbeds_layout(sweep, capsys):
    assert cr.main(["--input_dir", str(sweep)]) == 0
    out = capsys.readouterr().out
    records = load_records(sweep)
    assert out.startswith(f"Total records: {len(records)}\n")
    lines = out.splitlines()
    position = 0
    for name, method in METHODS.items():
        block = expected_tables(records, method, name)
        start = lines.index(block[0], position)
        assert lines[start:start + len(block)] == block, name
        position = start + len(block)
    assert "Jobs without `done`" in out and NOT_DONE[0] in out.split("Jobs without `done`")[1]
    assert (sweep / "results.txt").read_text() == out


def test_the_latex_report_is_domainbeds_document(sweep, capsys):
    assert cr.main(["--input_dir", str(sweep), "--latex"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("\\documentclass{article}") and out.rstrip().endswith("\\end{document}")
    assert "\\subsection{Model selection: leave-one-domain-out cross-validation}" in out
    assert "\\textbf{Algorithm}" in out and "$\\pm$" in out


def test_without_pair_jobs_leave_one_out_is_x(tmp_path, capsys):
    for fold in [(0,), (1,), (2,)]:
        job = tmp_path / f"job{fold[0]}"
        job.mkdir()
        lines = [json.dumps(record) for record in job_records("ERM", 0, 0, fold, job)]
        (job / "results.jsonl").write_text("\n".join(lines) + "\n")
        (job / "done").write_text("")
    assert cr.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    loo = out.split("leave-one-domain-out cross-validation")[1].splitlines()
    assert loo[2] == row(["ERM", "X", "X", "X", "X"], 20)
    assert "Jobs without `done`" not in out


def test_this_projects_runs_and_domainbeds_are_reported_together(sweep, tmp_path, capsys):
    from tests.test_collect_results import make_run

    shutil.copytree(sweep, tmp_path / "db")
    make_run(tmp_path, "ours", "Toy", "SAGM_DG", 0, 0, {0: [(0, .5, .40, .30)], 1: [(0, .6, .70, .50)]},
             {0: "A", 1: "B"})
    assert cr.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    ours, domainbed = out.split("Total records:")
    assert "SAGM_DG" in ours and "Toy" in ours and "Debug28" not in ours
    assert f"-------- Dataset: {DATASET}" in domainbed and "SAGM_DG" not in domainbed


def test_a_record_without_args_is_a_one_line_error(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    record = job_records("ERM", 0, 0, (0,), job)[0]
    (job / "results.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({"step": 1, "args": {}}) + "\n")
    with pytest.raises(cr.UsageError, match="line 2 lacks hparams"):
        domainbed_runs.read_sweep(tmp_path)
