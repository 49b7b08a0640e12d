"""list_top_hparams: DomainBed's listing of hparams candidates, best first, on DomainBed's own
directories (against DomainBed's rules recomputed in test_collect_results_domainbed) and on this
project's runs."""

import json
import re

import pytest

from domainbed.scripts import list_top_hparams
from tests.test_collect_results import make_run
from tests.test_collect_results_domainbed import (HPARAMS_SEEDS, METHODS, RULES, TIE, TRIAL_SEEDS, load_records,
                                                  write_sweep)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("domainbed_sweep"))


def listed(text):
    """{method name: {trial seed: [(val_acc, test_acc, lr, [output dirs]), ...]}} from the listing."""
    result, method, trial, candidate = {}, None, None, None
    for line in text.splitlines():
        if line.startswith("Model selection: "):
            method = result.setdefault(line[len("Model selection: "):], {})
        elif line.startswith("trial_seed: "):
            trial = method.setdefault(int(line.split()[1]), [])
        elif match := re.fullmatch(r"\t\{'val_acc': (\S+), 'test_acc': (\S+)\}", line):
            candidate = [float(match[1]), float(match[2]), None, []]
            trial.append(candidate)
        elif line.startswith("\t\t\tlr: "):
            candidate[2] = float(line.split()[1])
        elif line.startswith("\t\t\t/"):
            candidate[3].append(line.strip())
    return result


@pytest.mark.parametrize("algorithm,test_env", [("ERM", 1), ("IRM", 0)])
def test_domainbed_directories_rank_as_domainbed(sweep, capsys, algorithm, test_env):
    assert list_top_hparams.main(["--input_dir", str(sweep), "--dataset", "Debug28", "--algorithm", algorithm,
                                  "--test_env", str(test_env)]) == 0
    out = capsys.readouterr().out
    records = load_records(sweep)
    assert out.startswith(f"Total records: {len(records)}\n")
    result = listed(out)
    assert list(result) == list(METHODS)
    for name, method in METHODS.items():
        for trial_seed in TRIAL_SEEDS:
            group = [r for r in records if r["args"]["algorithm"] == algorithm
                     and r["args"]["trial_seed"] == trial_seed and test_env in r["args"]["test_envs"]]
            accs = [(seed, RULES[method]([r for r in group if r["args"]["hparams_seed"] == seed]))
                    for seed in HPARAMS_SEEDS]
            # DomainBed: sorted by validation accuracy (stable, seeds ascending), then reversed
            ranked = sorted([(seed, acc) for seed, acc in accs if acc is not None], key=lambda x: x[1][0])[::-1]
            got = result[name][trial_seed]
            assert [(val, test) for val, test, _, _ in got] == [tuple(map(float, acc)) for _, acc in ranked]
            assert [lr for _, _, lr, _ in got] == [1e-3 * (1 + seed) for seed, _ in ranked]
            for _, _, _, dirs in got:
                jobs = [json.loads((sweep / d.rsplit("/", 1)[1] / "results.jsonl").read_text().splitlines()[0])
                        for d in dirs]
                assert jobs and all(test_env in job["args"]["test_envs"] for job in jobs)
                assert len(dirs) == 3  # the single job and the two pair jobs holding test_env out


def test_a_tie_lists_the_highest_hparams_seed_first(sweep, capsys):
    algorithm, trial_seed, env = TIE
    list_top_hparams.main(["--input_dir", str(sweep), "--dataset", "Debug28", "--algorithm", algorithm,
                           "--test_env", str(env)])
    for candidates in listed(capsys.readouterr().out).values():
        first, second = candidates[trial_seed]
        assert first[:2] == second[:2] and (first[2], second[2]) == (2e-3, 1e-3)


def test_this_projects_runs_rank_by_its_rules(tmp_path, capsys):
    names = {0: "A", 1: "B"}
    make_run(tmp_path, "h0", "Toy", "ERM", 0, 0, {0: [(0, .7, .40, .30)], 1: [(0, .6, .70, .50)]}, names,
             hparams={"lr": 1.0})
    make_run(tmp_path, "h1", "Toy", "ERM", 0, 1, {0: [(0, .7, .60, .90)], 1: [(0, .5, .80, .70)]}, names,
             hparams={"lr": 2.0})
    make_run(tmp_path, "h2", "Toy", "ERM", 0, 2, {0: [(0, .9, .10, .10)]}, names, complete=False)
    assert list_top_hparams.main(["--input_dir", str(tmp_path), "--dataset", "Toy", "--algorithm", "ERM",
                                  "--test_env", "0"]) == 0
    out = capsys.readouterr().out
    assert "Total records" not in out  # no DomainBed directories
    result = listed(out)
    # training-domain validation ties (.7): the lowest hparams seed first; the unfinished run is left out
    assert [(v, t, lr) for v, t, lr, _ in result["training-domain validation set"][0]] == [(.7, .4, 1.0), (.7, .6, 2.0)]
    assert [(v, t) for v, t, _, _ in result["test-domain validation set (oracle)"][0]] == [(.9, .6), (.3, .4)]
    assert str(tmp_path / "h1") in out and "\t\tmethod: ERM" in out


@pytest.mark.parametrize("flag,value,message", [
    ("--dataset", "PACS", "no runs of dataset 'PACS' in the input; present: Debug28"),
    ("--algorithm", "MMD", "no runs of algorithm 'MMD' in the input; present: ERM, IRM"),
    ("--test_env", "7", "no runs of test environment 7 in the input; present: 0, 1, 2"),
])
def test_what_the_input_lacks_is_a_one_line_error(sweep, capsys, flag, value, message):
    argv = {"--input_dir": str(sweep), "--dataset": "Debug28", "--algorithm": "ERM", "--test_env": "0", flag: value}
    assert list_top_hparams.main([item for pair in argv.items() for item in pair]) != 0
    assert message in capsys.readouterr().err
