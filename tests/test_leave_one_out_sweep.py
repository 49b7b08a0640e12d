"""A DomainBed-style sweep with pair folds on Synthetic, and collect_results' three selection
methods checked against DomainBed's rules recomputed here from the raw records."""

import json
from collections import defaultdict

import numpy as np
import pytest

from domainbed.scripts import collect_results as cr
from domainbed.scripts import sweep


def _flat_records(root):
    """Every record of every run, with its run's args, as DomainBed's results.jsonl lines are."""
    records = []
    for args_path in sorted(root.rglob("args.json")):
        args = json.loads(args_path.read_text())
        for line in (args_path.parent / "results.jsonl").read_text().splitlines():
            records.append({**json.loads(line), "args": args})
    return records


def _environments(record):
    return sorted(int(key[3:-4]) for key in record if key.startswith("env") and key.endswith("_out"))


def _domainbed_iid(run_records, env):
    singles = [r for r in run_records if r["test_envs"] == [env]]
    accs = [(np.mean([r[f"env{k}_out"] for k in _environments(r) if k != env]), r[f"env{env}_in"]) for r in singles]
    return max(accs, key=lambda acc: acc[0]) if accs else None


def _domainbed_oracle(run_records, env):
    singles = sorted((r for r in run_records if r["test_envs"] == [env]), key=lambda r: r["step"])
    return (singles[-1][f"env{env}_out"], singles[-1][f"env{env}_in"]) if singles else None


def _domainbed_loo(run_records, env):
    by_step = defaultdict(list)
    for record in run_records:
        by_step[record["step"]].append(record)
    accs = []
    for step in sorted(by_step):
        singles = [r for r in by_step[step] if len(r["test_envs"]) == 1]
        if len(singles) != 1:
            continue
        n_envs = len(_environments(singles[0]))
        val = np.zeros(n_envs) - 1
        for r in by_step[step]:
            if len(r["test_envs"]) == 2:
                (other,) = set(r["test_envs"]) - {env}
                val[other] = r[f"env{other}_in"]
        val = np.delete(val, env)
        if (val == -1).any():
            continue
        accs.append((val.sum() / (n_envs - 1), singles[0][f"env{env}_in"]))
    return max(accs, key=lambda acc: acc[0]) if accs else None


RULES = {cr.TRAINING_DOMAIN: _domainbed_iid, cr.LEAVE_ONE_OUT: _domainbed_loo, cr.ORACLE: _domainbed_oracle}


def _domainbed_selection(records, rule):
    """{(algorithm, test env): {trial seed: test accuracy}} as DomainBed's collect_results groups
    records: by (trial seed, algorithm, test env), a record of a pair fold in both of its envs' groups,
    then by hparams seed (ties here go to the lowest hparams seed, as in collect_results)."""
    groups = defaultdict(list)
    for record in records:
        for env in record["test_envs"]:
            groups[(record["args"]["trial_seed"], record["args"]["algorithm"], env)].append(record)
    selected = defaultdict(dict)
    for (trial, algorithm, env), group in groups.items():
        runs = defaultdict(list)
        for record in group:
            runs[record["args"]["hparams_seed"]].append(record)
        accs = [acc for _, run in sorted(runs.items()) if (acc := rule(run, env)) is not None]
        if accs:
            selected[(algorithm, env)][trial] = max(accs, key=lambda acc: acc[0])[1]
    return selected


@pytest.mark.slow
def test_domainbed_sweep_with_pair_folds_gives_domainbeds_three_selections(tmp_path, capsys):
    argv = ["launch", "--datasets", "Synthetic", "--algorithms", "ERM", "CORAL", "--n_hparams", "2",
            "--n_trials", "2", "--output_dir", str(tmp_path), "--steps", "2", "--checkpoint_freq", "1",
            "--pair_folds", "--command_launcher", "local", "--skip_confirmation",
            "--", "--batch_size", "8", "--swad", "False"]
    assert sweep.run(argv)["counts"]["done"] == 8
    results = cr.collect(tmp_path, ["algorithm"])  # --batch_size makes a method group of its own otherwise
    assert results.methods == [cr.TRAINING_DOMAIN, cr.LEAVE_ONE_OUT, cr.ORACLE]
    records = _flat_records(tmp_path)
    assert {tuple(r["test_envs"]) for r in records} == {(0,), (1,), (2,), (3,), (0, 1), (0, 2), (0, 3), (1, 2),
                                                        (1, 3), (2, 3)}
    for method, rule in RULES.items():
        expected = _domainbed_selection(records, rule)
        for algorithm in ("ERM", "CORAL"):
            for env in range(4):
                got = results.trial_results(method, "Synthetic", algorithm, (env,))
                assert got == pytest.approx(expected[(algorithm, env)]), (method, algorithm, env)
                assert set(got) == {0, 1}
    assert cr.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for method in RULES:
        assert f"=== {method} ===" in text
