"""collect_results --compare and --paired on hand-made runs: two methods, three trial seeds, two
datasets, every number checked against one computed here from the accuracies written."""

import json
import math

import numpy as np
import pytest
import yaml

from domainbed import misc
from domainbed.hparams.config import run_hparams
from domainbed.results import compare, paired, published
from domainbed.scripts import collect_results as cr

TDV = cr.TRAINING_DOMAIN
DATASETS = {"PACS": ["A", "C", "P", "S"], "VLCS": ["C", "L", "S", "V"]}
METHODS = ("ERM", "CORAL")
TRIALS = (0, 1, 2)


def accuracy(method, dataset, trial, env) -> float:
    """The test accuracy written for a fold: distinct for every method, dataset, trial and domain."""
    return 0.5 + 0.01 * (METHODS.index(method) * 7 + trial * 3 + env) + (0.02 * trial * trial if method == "CORAL" else 0)


def _hparams(algorithm, dataset, trial):
    hparams = json.loads(misc.to_json(run_hparams(algorithm, dataset, 0, trial)))
    return {**hparams, "swad": False}


@pytest.fixture
def sweep(tmp_path):
    for dataset, names in DATASETS.items():
        for method in METHODS:
            for trial in TRIALS:
                run_dir = tmp_path / f"{dataset}_{method}_{trial}"
                run_dir.mkdir()
                args = {"dataset": dataset, "algorithm": method, "trial_seed": trial, "hparams_seed": 0, "steps": 20,
                        "split": "random", "test_envs": None}
                (run_dir / "args.json").write_text(json.dumps(args))
                (run_dir / "hparams.json").write_text(json.dumps(_hparams(method, dataset, trial)))
                records, rows = [], {}
                for env, name in enumerate(names):
                    test = accuracy(method, dataset, trial, env)
                    records.append({"test_envs": [env], "step": 0, "train_out": 0.9, "test_in": test,
                                    "test_out": test, "loss": 1.0})
                    rows[name] = test
                (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
                table = {"test_envs": list(range(len(names))), "environments": names,
                         "rows": {"iid": rows, "oracle": rows, "last": rows}}
                (run_dir / "table.json").write_text(json.dumps(table))
    return tmp_path


SOURCE = {"paper": "Paper", "table": "Table 9", "file": "o/r README.md", "commit": "1" * 40}
PROTOCOL = {"backbone": "resnet50", "pretraining": "ImageNet", "image_size": 224, "steps": 5000,
            "batch_size": 32, "hparam_search": "20 random draws", "trials": 3, "spread": "SE", "split": "random"}
ERM_PACS = {"method": "ERM", "dataset": "PACS", "selection": "training-domain", "protocol": "p", "source": "s",
            "domains": [51.0, 52.0, 60.0, 53.0], "domain_spread": [0.5, 0.1, 0.2, 0.3], "average": 54.0,
            "average_spread": 0.4}
CORAL_PACS = {"method": "CORAL", "dataset": "PACS", "selection": "training-domain", "protocol": "p", "source": "s",
              "average": 61.0, "average_spread": 2.0, "spread": "SD", "split": "official"}
ERM_VLCS = {"method": "ERM", "dataset": "VLCS", "selection": "training-domain", "protocol": "p", "source": "s",
            "average": 50.0, "spread": "none"}
ENSEMBLE = {**ERM_PACS, "variant": "an ensemble of 5 runs"}


@pytest.fixture
def published_file(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump({"sources": {"s": SOURCE}, "protocols": {"p": PROTOCOL},
                                    "entries": [ERM_PACS, CORAL_PACS, ERM_VLCS, ENSEMBLE]}))
    return path


def ours(method, dataset, env=None):
    """(mean, DomainBed's SE, per-trial values) in points, of a domain or (env None) the trial averages."""
    envs = range(len(DATASETS[dataset])) if env is None else [env]
    values = np.array([100 * np.mean([accuracy(method, dataset, t, e) for e in envs]) for t in TRIALS])
    return values.mean(), values.std() / math.sqrt(len(values)), values


def test_the_compare_rows_against_values_computed_here(sweep, published_file):
    results = cr.collect(sweep)
    entries = published.load(published_file)
    rows = compare.compare_rows(results, TDV, "PACS", "ERM", entries, "text")
    assert len(rows) == 5  # four domains and the average, of the one matching entry (the ensemble is never a match)
    assert rows[0][:2] == ["ERM", "s / p"]
    for env, row in enumerate(rows[:4]):
        mean, se, _ = ours("ERM", "PACS", env)
        assert row[2] == "ACPS"[env]
        assert row[3] == f"{mean:.1f} +/- {se:.1f} (3)"
        gap = mean - ERM_PACS["domains"][env]
        assert row[5] == f"{gap:+.1f}"
        z = abs(gap) / math.hypot(se, ERM_PACS["domain_spread"][env])
        assert row[6] == f"{'inside' if z < 1.959964 else 'outside'} (z={z:.2f})"
    mean, se, _ = ours("ERM", "PACS")
    assert rows[4][2:6] == ["Avg", f"{mean:.1f} +/- {se:.1f} (3)", "54.0 +/- 0.4 SE (3)", f"{mean - 54.0:+.1f}"]
    differences = rows[0][7]
    assert "steps 20 vs 5000" in differences and "hparams defaults vs 20 random draws" in differences
    assert "backbone" not in differences and "trials" not in differences

    (coral,) = [row for row in compare.compare_rows(results, TDV, "PACS", "CORAL", entries, "text") if row[2] == "Avg"]
    mean, se, _ = ours("CORAL", "PACS")
    z = abs(mean - 61.0) / math.hypot(se, 2.0 / math.sqrt(3))  # a published SD over 3 trials
    assert coral[6].endswith(f"(z={z:.2f})")
    assert coral[3:5] == [f"{mean:.1f} +/- {se:.1f} (3)", "61.0 +/- 2.0 SD (3)"]

    vlcs = compare.compare_rows(results, TDV, "VLCS", "ERM", entries, "text")
    assert vlcs[-1][6] == "untested: no published SE" and vlcs[0][4] == "-"  # no per-domain numbers published
    assert compare.compare_rows(results, TDV, "VLCS", "CORAL", entries, "text") == [
        ["CORAL", "no published entry", "", "", "", "", "", "none for CORAL, averaging none, training-domain selection on VLCS"]]
    oracle = compare.compare_rows(results, cr.ORACLE, "PACS", "ERM", entries, "text")
    assert oracle[0][1] == "no published entry"


def test_the_protocol_differences_name_backbone_pretraining_split_and_trials(sweep, published_file):
    results = cr.collect(sweep)
    (entry,) = [e for e in published.load(published_file) if e.method == "CORAL"]
    runs = [run for run in results.complete if run.dataset == "PACS" and run.group == "CORAL"]
    ours_protocol = {**compare.our_protocol(runs), "pretraining": "none", "backbone": "resnet18"}
    differences = compare.protocol_differences(ours_protocol, entry, 2, "lr=0.001", "none")
    assert differences == ["backbone resnet18 vs resnet50", "pretraining none vs ImageNet", "steps 20 vs 5000",
                           "hparams defaults vs 20 random draws", "split random vs official", "trials 2 vs 3",
                           "hparams set by hand: lr=0.001"]


def test_paired_statistics_and_bootstrap_against_values_computed_here(sweep):
    results = cr.collect(sweep)
    for dataset in DATASETS:
        a = results.trial_averages(TDV, dataset, "ERM")
        b = results.trial_averages(TDV, dataset, "CORAL")
        stats = paired.paired_difference(a, b)
        d = (ours("CORAL", dataset)[2] - ours("ERM", dataset)[2]) / 100
        assert stats.n == 3
        assert stats.mean == pytest.approx(d.mean())
        sd = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / 2)
        assert stats.sd == pytest.approx(sd) and stats.se == pytest.approx(sd / math.sqrt(3))
        # the bootstrap by hand: the same generator's draws, one resample at a time
        draws = np.random.default_rng(0).integers(0, 3, size=(10000, 3))
        means = sorted(sum(d[i] for i in draw) / 3 for draw in draws)
        assert stats.low == pytest.approx(np.percentile(means, 2.5))
        assert stats.high == pytest.approx(np.percentile(means, 97.5))
        assert min(d) - 1e-9 <= stats.low <= stats.mean <= stats.high <= max(d) + 1e-9
    overall = paired.paired_difference(paired.overall_averages(results, TDV, "ERM"),
                                       paired.overall_averages(results, TDV, "CORAL"))
    d = np.mean([(ours("CORAL", ds)[2] - ours("ERM", ds)[2]) / 100 for ds in DATASETS], axis=0)
    assert overall.mean == pytest.approx(d.mean()) and overall.sd == pytest.approx(d.std(ddof=1))


def test_seeds_needed_ranks_and_one_seed():
    # (1.959964 + 0.841621)^2 * (2 / 1)^2 = 31.4 -> 32 seeds
    assert paired.seeds_needed(2.0, 1.0) == 32
    assert paired.seeds_needed(0.1, 5.0) == 2 and paired.seeds_needed(None, 1.0) is None
    assert paired.ranks({"a": 0.5, "b": 0.7, "c": 0.5, "d": 0.1}) == {"b": 1, "a": 2.5, "c": 2.5, "d": 4}
    one = paired.paired_difference({0: 0.5, 1: 0.6}, {1: 0.7, 2: 0.1})
    assert (one.n, one.se, one.low) == (1, None, None) and one.mean == pytest.approx(0.1)
    assert paired.paired_difference({0: 0.5}, {1: 0.5}) is None


def test_the_averages_table_ranks_every_group(sweep):
    results = cr.collect(sweep)
    rows = paired.averages_rows(results, TDV, "text")
    assert [row[0] for row in rows] == ["CORAL", "ERM"]
    for row in rows:
        for dataset, cell in zip(DATASETS, row[1:3]):
            mean, se, _ = ours(row[0], dataset)
            rank = 1 if ours(row[0], dataset)[0] >= max(ours(m, dataset)[0] for m in METHODS) else 2
            assert cell == f"{mean:.1f} +/- {se:.1f} (#{rank})"


def test_the_command_line_in_markdown_and_latex(sweep, published_file, capsys):
    assert cr.main([str(sweep), "--compare", "--published", str(published_file), "--paired", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "no published entry" in out and "Paired differences against ERM" in out and "| CORAL - ERM" in out
    assert "Not the paper's number: test-domain validation (oracle) peeks at the test domain" in out
    assert out.count("The paper's number: training-domain validation") >= 3
    assert "o/r README.md @ " + "1" * 40 in out
    # a note under a Markdown table is a paragraph of its own, not one more row
    assert "|\n\nThe paper's number: training-domain validation" in out
    assert "|\nThe paper's number" not in out
    assert cr.main([str(sweep), "--compare", "--published", str(published_file), "--latex"]) == 0
    assert "\\pm$" in capsys.readouterr().out


def test_the_command_line_refuses_an_unknown_baseline_and_a_missing_file(sweep, tmp_path, capsys):
    assert cr.main([str(sweep), "--paired", "NoSuchGroup"]) == 2
    assert "--paired 'NoSuchGroup' is no group; valid: CORAL, ERM" in capsys.readouterr().err
    assert cr.main([str(sweep), "--compare", "--published", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cr.main([str(sweep), "--published", str(tmp_path / "none.yaml")]) == 2
    assert "--published is the file --compare reads: add --compare" in capsys.readouterr().err
    assert cr.main([str(sweep), "--paired", "--effect", "0"]) == 2
    assert "--effect 0: give a difference in accuracy points above 0" in capsys.readouterr().err
    assert not (sweep / "results.txt").exists()


def test_the_packaged_file_gives_every_group_an_entry_or_says_it_has_none(sweep):
    results = cr.collect(sweep)
    entries = published.load()
    text = compare.format_compare(results, entries, "text")
    assert "domainbed_2020" in text and "miro_table1" in text
    for method in results.methods:
        for dataset in DATASETS:
            for group in METHODS:
                assert compare.compare_rows(results, method, dataset, group, entries, "text")


def test_train_alls_table_says_which_row_is_the_papers_number():
    from domainbed.results import report

    text = report.format_table(report.build_table([{"iid": 0.5, "oracle": 0.6, "last": 0.4}], ["A"]), ["A"], {})
    last = text.splitlines()[-1]
    assert "The paper's number: row `iid`" in last and "`oracle` peeks at the test domain" in last
    assert "`last` is no selection" in last


def test_each_collect_results_table_maps_to_a_published_selection():
    assert compare.selection_of(cr.TRAINING_DOMAIN) == ("training-domain", "none")
    assert compare.selection_of(cr.LEAVE_ONE_OUT) == ("leave-one-domain-out", "none")
    assert compare.selection_of(cr.ORACLE) == ("oracle", "none")
    assert compare.selection_of("SWAD (averaged model), training-domain validation") == ("training-domain", "SWAD")
    assert compare.selection_of("SMA (averaged model), training-domain validation") == ("training-domain", "SMA")
