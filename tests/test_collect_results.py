"""collect_results on hand-made runs: hand-computed selections, means and standard errors."""

import json
import math
from itertools import combinations
from types import SimpleNamespace

import pytest

from domainbed.results import selection
from domainbed.scripts import collect_results as cr

TDV, ORACLE = cr.TRAINING_DOMAIN, cr.ORACLE
SWAD = "SWAD (averaged model), training-domain validation"


def make_run(root, name, dataset, algorithm, trial_seed, hparams_seed, folds, names, extra_rows=None, complete=True,
             hparams=None, tag=None):
    """`folds`: {env: [(step, train_out, test_in, test_out), ...]}; `extra_rows`: {env: {row: acc}};
    `hparams`: written to hparams.json (none: no hparams.json, as a run from before it was saved)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "args.json").write_text(json.dumps({"dataset": dataset, "algorithm": algorithm, "trial_seed": trial_seed,
                                                   "hparams_seed": hparams_seed, "test_envs": None, "tag": tag}))
    if hparams is not None:
        (run_dir / "hparams.json").write_text(json.dumps(hparams))
    lines, rows = [], {}
    for env, points in folds.items():
        records = [{"test_envs": [env], "step": step, "train_out": val, "test_in": test, "test_out": out,
                    "loss": 1.0 / (step + 1)} for step, val, test, out in points]
        lines += [json.dumps(record) for record in records]
        rows[env] = {**selection.select(records), **(extra_rows or {}).get(env, {})}
    (run_dir / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    if complete:
        table = {"test_envs": list(folds), "environments": [names[env] for env in folds],
                 "rows": {row: {names[env]: rows[env][row] for env in folds} for row in rows[next(iter(folds))]}}
        (run_dir / "table.json").write_text(json.dumps(table))
    return run_dir


@pytest.fixture
def sweep_dir(tmp_path):
    toy = {0: "A", 1: "B"}
    # ERM on Toy: two trials x two hparams seeds. Per fold: (step, train_out, test_in, test_out).
    make_run(tmp_path, "e_t0_h0", "Toy", "ERM", 0, 0, {
        0: [(0, .5, .40, .30), (1, .7, .45, .60), (2, .6, .50, .55)],
        1: [(0, .6, .70, .50), (1, .6, .80, .70)],  # a tie: the earlier checkpoint
    }, toy)
    make_run(tmp_path, "e_t0_h1", "Toy", "ERM", 0, 1, {
        0: [(0, .8, .30, .20), (1, .65, .60, .65)],
        1: [(0, .55, .90, .90)],
    }, toy)
    make_run(tmp_path, "e_t1_h0", "Toy", "ERM", 1, 0, {0: [(0, .5, .50, .50)], 1: [(0, .7, .60, .40)]}, toy)
    make_run(tmp_path, "e_t1_h1", "Toy", "ERM", 1, 1, {0: [(0, .5, .90, .40)], 1: [(0, .6, .65, .80)]}, toy)
    # Unfinished: would win everything if it were averaged in.
    make_run(tmp_path, "sweep/job/e_t0_h2", "Toy", "ERM", 0, 2, {0: [(0, .99, .99, .99)]}, toy, complete=False)
    # SAGM_DG with a SWAD average, one trial.
    make_run(tmp_path, "s_t0_h0", "Toy", "SAGM_DG", 0, 0, {0: [(0, .5, .5, .5)], 1: [(0, .5, .5, .5)]}, toy,
             extra_rows={0: {"SWAD": .70, "SWAD (inD)": .80}, 1: {"SWAD": .75, "SWAD (inD)": .60}})
    make_run(tmp_path, "s_t0_h1", "Toy", "SAGM_DG", 0, 1, {0: [(0, .4, .4, .4)], 1: [(0, .4, .4, .4)]}, toy,
             extra_rows={0: {"SWAD": .60, "SWAD (inD)": .85}, 1: {"SWAD": .95, "SWAD (inD)": .65}})
    make_run(tmp_path, "o_t0_h0", "Other", "ERM", 0, 0, {0: [(0, .5, .8, .5)]}, {0: "C"})
    return tmp_path


def test_selection_per_method_trial_and_fold(sweep_dir):
    results = cr.collect(sweep_dir)
    assert results.methods == [TDV, ORACLE, SWAD]
    assert results.trial_results(TDV, "Toy", "ERM", (0,)) == {0: .30, 1: .50}  # t1: a tie goes to hparams seed 0
    assert results.trial_results(TDV, "Toy", "ERM", (1,)) == {0: .70, 1: .60}
    assert results.trial_results(ORACLE, "Toy", "ERM", (0,)) == {0: .60, 1: .50}  # the last checkpoint
    assert results.trial_results(ORACLE, "Toy", "ERM", (1,)) == {0: .90, 1: .65}
    assert results.trial_results(SWAD, "Toy", "SAGM_DG", (0,)) == {0: .60}
    assert results.trial_results(SWAD, "Toy", "SAGM_DG", (1,)) == {0: .95}
    assert results.trial_results(SWAD, "Toy", "ERM", (0,)) == {}
    chosen = results.choices[(TDV, "Toy", "ERM", 0, (0,))]
    assert chosen.run.path.name == "e_t0_h1" and chosen.validation == .8


def test_means_standard_errors_and_averages(sweep_dir):
    results = cr.collect(sweep_dir)
    assert results.cell(TDV, "Toy", "ERM", (0,)) == pytest.approx((.40, .1 / math.sqrt(2)))
    assert results.cell(TDV, "Toy", "ERM", (1,)) == pytest.approx((.65, .05 / math.sqrt(2)))
    assert results.dataset_average(TDV, "Toy", "ERM") == pytest.approx(.525)
    assert results.summary_cell(TDV, "Toy", "ERM") == pytest.approx((.525, .025 / math.sqrt(2)))
    assert results.cell(ORACLE, "Toy", "ERM", (1,)) == pytest.approx((.775, .125 / math.sqrt(2)))
    assert results.dataset_average(SWAD, "Toy", "SAGM_DG") == pytest.approx(.775)
    assert results.dataset_average(SWAD, "Toy", "ERM") is None
    assert results.summary_cell(TDV, "Other", "SAGM_DG") is None


def test_report_formats_and_incomplete_runs(sweep_dir):
    results = cr.collect(sweep_dir)
    assert [run.path.name for run in results.incomplete] == ["e_t0_h2"]
    text = cr.format_report(results)
    assert "40.0 +/- 7.1" in text and "65.0 +/- 3.5" in text and "52.5 +/- 1.8" in text
    erm_toy = next(line for line in text.splitlines() if "ERM" in line and "40.0" in line)
    assert [cell.strip() for cell in erm_toy.split("|")[-3:-1]] == ["52.5", "2"]  # Avg, Seeds
    summary = text.split("Averages over datasets")[1].split("===")[0]
    assert "| SAGM_DG   |" in summary and " X " in summary  # no Other results: no average
    assert "SAGM_DG: no trial seed 1 of fold A, no trial seed 1 of fold B" in text  # ERM has two trials
    assert "Incomplete runs, left out of every number above (1)" in text
    assert "sweep/job/e_t0_h2: Toy ERM hparams_seed 2 trial_seed 0 (TE0 at step 0)" in text
    assert "99.0" not in text
    markdown = cr.format_report(results, "markdown")
    assert "| ERM       | 40.0 ± 7.1 | 65.0 ± 3.5 | 52.5 |   2   |" in markdown and "### " + SWAD in markdown
    latex = cr.format_report(results, "latex")
    assert "SAGM\\_DG * & 60.0 $\\pm$ 0.0 & 95.0 $\\pm$ 0.0 & 77.5 & 1 \\\\" in latex


def test_command_line_writes_the_report_and_plots(sweep_dir, capsys):
    assert cr.main([str(sweep_dir), "--markdown", "--plots"]) == 0
    out = capsys.readouterr().out
    assert (sweep_dir / "results.md").read_text() in out
    plots = sorted(path.relative_to(sweep_dir / "plots").as_posix() for path in (sweep_dir / "plots").rglob("*.png"))
    assert "accuracy_Toy_Training_domain_validation.png" in plots
    assert "curves/Toy/sweep_job_e_t0_h2.png" in plots  # curves of unfinished runs too
    assert len(plots) == 3 * 2 + 8
    assert all((sweep_dir / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert cr.main([str(sweep_dir / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def _results_of_groups(count):
    """PACS results of `count` method groups named as real ones are, three trial seeds each."""
    algorithms = ["SAGM_DG", "ERM", "GradSurgery", "GSAM", "RSC"]
    domains = ["art_painting", "cartoon", "photo", "sketch"]
    folds = [(env,) for env in range(len(domains))]
    runs, choices = [], {}
    for index in range(count):
        group = f"{algorithms[index % 5]} swad=LossValley lr={index + 1}e-05 resnet_dropout=0.5 [tag{index}]"
        run = SimpleNamespace(complete=True, dataset="PACS", group=group)
        runs.append(run)
        for fold in folds:
            for trial in range(3):
                test = .6 + .013 * ((7 * index + 3 * fold[0] + trial) % 30)
                choices[(TDV, "PACS", group, trial, fold)] = cr.Choice(run, .9, test)
    return cr.Results(runs, [TDV], choices, {"PACS": folds}, {("PACS", f): d for f, d in zip(folds, domains)})


@pytest.mark.parametrize("groups", [3, 30])
def test_the_accuracy_plot_stays_readable_with_many_long_group_names(tmp_path, groups):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    results = _results_of_groups(groups)
    figure = cr.plot_accuracies(results, TDV, "PACS", tmp_path / "accuracy.png")
    FigureCanvasAgg(figure).draw()  # a bare Figure's canvas does not lay out: measure as the PNG is drawn
    texts = [text for axes in figure.axes
             for text in (*axes.get_xticklabels(), *axes.get_yticklabels(), *axes.texts)
             if text.get_visible() and text.get_text()]
    boxes = [text.get_window_extent() for text in texts]
    overlapping = [(a.get_text(), b.get_text()) for (a, box_a), (b, box_b) in combinations(zip(texts, boxes), 2)
                   if box_a.overlaps(box_b)]
    assert overlapping == []
    assert all(figure.bbox.contains(box.x0, box.y0) and figure.bbox.contains(box.x1, box.y1) for box in boxes)
    shown = " ".join(text.get_text().replace("\n", " ") for text in texts)
    assert all(group in shown for group in results.groups("PACS"))
    left = min(axes.get_window_extent().x0 for axes in figure.axes)
    right = max(axes.get_window_extent().x1 for axes in figure.axes)
    assert right - left >= figure.bbox.width / 2


def _drawn(algorithm, dataset, hparams_seed, trial_seed, **chosen):
    """The hparams.json of a run that set `chosen` on top of the registry's draw and config.yaml."""
    from domainbed import misc

    drawn = cr._drawn_hparams(algorithm, dataset, hparams_seed, trial_seed)
    return {**drawn, **{key: json.loads(misc.to_json(v)) for key, v in chosen.items()}}


@pytest.fixture
def methods_dir(tmp_path):
    """ERM, ERM + SWAD and ERM + QT-DoG on Synthetic, two hparams seeds x two trials each, where
    QT-DoG lacks trial 1 of fold B."""
    names = {0: "A", 1: "B"}
    variants = {"erm": {}, "swad": {"swad": "LossValley"}, "qt": {"quant": True, "q_bits": 4}}
    for offset, (variant, chosen) in enumerate(variants.items()):
        for trial in (0, 1):
            for hseed in (0, 1):
                base = .1 * offset + .05 * trial + .01 * hseed
                folds = {0: [(0, .5, base + .3, .5)], 1: [(0, .5, base + .4, .5)]}
                if variant == "qt" and trial == 1:
                    folds = {0: folds[0]}
                make_run(tmp_path, f"{variant}_t{trial}_h{hseed}", "Synthetic", "ERM", trial, hseed, folds, names,
                         hparams=_drawn("ERM", "Synthetic", hseed, trial, num_workers=0, **chosen))
    make_run(tmp_path, "tagged", "Synthetic", "ERM", 0, 0, {0: [(0, .5, .9, .5)], 1: [(0, .5, .9, .5)]}, names,
             hparams=_drawn("ERM", "Synthetic", 0, 0, lr=0.5), tag="mine")
    return tmp_path


def test_runs_are_grouped_by_method_not_by_algorithm(methods_dir):
    results = cr.collect(methods_dir)
    assert results.groups() == ["ERM", "ERM [mine]", "ERM q_bits=4 quant=true", "ERM swad=LossValley"]
    assert results.trial_results(TDV, "Synthetic", "ERM swad=LossValley", (0,)) == pytest.approx({0: .4, 1: .45})
    assert results.cell(TDV, "Synthetic", "ERM", (1,)) == pytest.approx((.425, .025 / math.sqrt(2)))
    assert results.seeds(TDV, "Synthetic", "ERM q_bits=4 quant=true", (0,)) == 2
    assert results.seeds(TDV, "Synthetic", "ERM q_bits=4 quant=true", (1,)) == 1
    assert results.seeds(TDV, "Synthetic", "ERM q_bits=4 quant=true") == 1  # trials with every fold
    assert results.missing("Synthetic", "ERM q_bits=4 quant=true") == ["trial seed 1 of fold B"]
    assert results.missing("Synthetic", "ERM [mine]") == ["trial seed 1 of fold A", "trial seed 1 of fold B"]
    assert results.missing("Synthetic", "ERM") == []
    text = cr.format_report(results)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.split("Training-domain validation ===")[1].split("Averages")[0].splitlines()
            if line.startswith("| ERM")}
    assert rows["ERM"] == ["32.5 +/- 1.8", "42.5 +/- 1.8", "37.5", "2"]
    assert rows["ERM swad=LossValley"] == ["42.5 +/- 1.8", "52.5 +/- 1.8", "47.5", "2"]
    assert rows["ERM q_bits=4 quant=true *"] == ["52.5 +/- 1.8", "60.0 +/- 0.0", "56.2", "1-2"]
    assert "Synthetic ERM q_bits=4 quant=true: no trial seed 1 of fold B" in text


def test_group_by_keys_tag_and_input_dir_spelling(methods_dir, capsys):
    results = cr.collect(methods_dir, group_by=["algorithm", "swad"])
    assert results.groups() == ["ERM swad=False", "ERM swad=LossValley"]
    assert results.seeds(TDV, "Synthetic", "ERM swad=False", (0,)) == 2
    assert cr.main(["--input_dir", str(methods_dir), "--group_by", "tag"]) == 0
    out = capsys.readouterr().out
    assert "| tag=mine " in out and "| tag=null " in out
    assert (methods_dir / "results.txt").read_text() == out
    assert cr.main([str(methods_dir), "--input_dir", str(methods_dir)]) == 2
    assert "give the runs' directory once" in capsys.readouterr().err
    assert cr.main([]) == 2


def test_a_real_sweep_of_erm_swad_and_qtdog_gives_three_rows(tmp_path, capsys):
    import train_all

    common = ["--dataset", "Synthetic", "--steps", "2", "--checkpoint_freq", "1", "--test_envs", "0", "1",
              "--batch_size", "8", "--num_workers", "0"]
    variants = {"erm": ["--swad", "False"], "swad": [],
                "qt": ["--quant", "1", "--q_steps", "1", "--q_bits", "4", "--swad", "False"]}
    for variant, flags in variants.items():
        for trial in (0, 1):
            train_all.run([f"{variant}{trial}", *common, "--trial_seed", str(trial),
                           "--output_dir", str(tmp_path / f"{variant}{trial}"), *flags])
    capsys.readouterr()
    assert cr.main([str(tmp_path)]) == 0
    table = capsys.readouterr().out.split("Training-domain validation ===")[1].split("Averages")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ERM")]
    assert [row.split("|")[1].strip() for row in rows] == [  # --batch_size 8 is a choice of every run
        "ERM batch_size=8", "ERM batch_size=8 q_bits=4 q_steps=1 quant=true", "ERM batch_size=8 swad=LossValley"]
    assert all(row.count("+/-") == 2 and row.split("|")[-2].strip() == "2" for row in rows)


@pytest.mark.slow
def test_a_sweep_of_erm_swad_and_qtdog_launched_by_sweep_py_gives_three_rows(tmp_path, capsys):
    from domainbed.scripts import sweep

    base = ["launch", "--datasets", "Synthetic", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "2",
            "--output_dir", str(tmp_path), "--steps", "2", "--checkpoint_freq", "1", "--skip_confirmation", "--",
            "--test_envs", "0", "1", "--batch_size", "8", "--num_workers", "0"]
    for flags in ([], ["--swad", "LossValley"], ["--quant", "1", "--q_steps", "1", "--q_bits", "4"]):
        assert sweep.run(base + flags)["failed"] == []
    capsys.readouterr()
    assert cr.main([str(tmp_path)]) == 0
    table = capsys.readouterr().out.split("Training-domain validation ===")[1].split("Averages")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ERM")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "ERM batch_size=8", "ERM batch_size=8 q_bits=4 q_steps=1 quant=true", "ERM batch_size=8 swad=LossValley"]
    assert all(row.count("+/-") == 2 and row.split("|")[-2].strip() == "2" for row in rows)


LOO = cr.LEAVE_ONE_OUT


def make_loo_run(root, name, trial_seed, hparams_seed, singles, pairs):
    """A finished ERM run on "Tri" (environments A, B, C): `singles` {env: [(step, test_in), ...]},
    `pairs` {(i, j): [(step, env_i_in, env_j_in), ...]}; training-domain numbers are constant."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "args.json").write_text(json.dumps({"dataset": "Tri", "algorithm": "ERM", "trial_seed": trial_seed,
                                                   "hparams_seed": hparams_seed, "test_envs": None, "tag": None}))
    outs = {f"env{env}_out": .5 for env in range(3)}
    lines, rows = [], {}
    for env, points in singles.items():
        records = [{"test_envs": [env], "step": step, "train_out": .5, "test_in": test, "test_out": .5,
                    f"env{env}_in": test, **outs} for step, test in points]
        lines += records
        rows[env] = selection.select(records)
    for (i, j), points in pairs.items():
        lines += [{"test_envs": [i, j], "step": step, "train_out": .5, "test_in": (a + b) / 2, "test_out": .5,
                   f"env{i}_in": a, f"env{j}_in": b, **outs} for step, a, b in points]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(record) + "\n" for record in lines))
    names = {0: "A", 1: "B", 2: "C"}
    table = {"test_envs": list(singles), "environments": [names[env] for env in singles],
             "rows": {row: {names[env]: rows[env][row] for env in singles} for row in rows[0]}}
    (run_dir / "table.json").write_text(json.dumps(table))


def test_leave_one_domain_out_over_runs_by_hand(tmp_path):
    singles = {1: [(0, .5)], 2: [(0, .5)]}  # folds B and C lack pair fold (1, 2): no result
    # trial 0, hparams 0: step 0 (.5 + .75) / 2 = .625, step 1 (.75 + .25) / 2 = .5 -> (.625, test .40)
    make_loo_run(tmp_path, "t0_h0", 0, 0, {0: [(0, .40), (1, .50)], **singles},
                 {(0, 1): [(0, .1, .5), (1, .1, .75)], (0, 2): [(0, .1, .75), (1, .1, .25)]})
    # trial 0, hparams 1: step 0 .25, step 1 .75 -> (.75, test .70): the better validation, chosen
    make_loo_run(tmp_path, "t0_h1", 0, 1, {0: [(0, .60), (1, .70)], **singles},
                 {(0, 1): [(0, .1, .25), (1, .1, .75)], (0, 2): [(0, .1, .25), (1, .1, .75)]})
    # trial 1, hparams 0: a tie of .5 at steps 0 and 1 -> the earlier, test .55
    make_loo_run(tmp_path, "t1_h0", 1, 0, {0: [(0, .55), (1, .65)], **singles},
                 {(0, 1): [(0, .1, .5), (1, .1, .5)], (0, 2): [(0, .1, .5), (1, .1, .5)]})
    # trial 1, hparams 1: pair fold (0, 2) missing -> no result, however good fold (0, 1) is
    make_loo_run(tmp_path, "t1_h1", 1, 1, {0: [(0, .99)], **singles}, {(0, 1): [(0, .1, 1.0)]})
    results = cr.collect(tmp_path)
    assert results.methods == [TDV, LOO, ORACLE]
    assert results.trial_results(LOO, "Tri", "ERM", (0,)) == {0: .70, 1: .55}
    assert results.choices[(LOO, "Tri", "ERM", 0, (0,))].validation == .75
    assert results.cell(LOO, "Tri", "ERM", (0,)) == pytest.approx((.625, .075 / math.sqrt(2)))
    assert results.cell(LOO, "Tri", "ERM", (1,)) is None and results.dataset_average(LOO, "Tri", "ERM") is None
    # the other methods ignore the pair folds: training-domain validation ties at .5, the lowest hparams seed
    assert results.trial_results(TDV, "Tri", "ERM", (0,)) == {0: .40, 1: .55}
    text = cr.format_report(results)
    assert text.index("=== " + TDV) < text.index("=== " + LOO) < text.index("=== " + ORACLE)
    loo_table = text.split(f"=== {LOO} ===")[1].split("===")[0]
    assert "| ERM       | 62.5 +/- 5.3 | X | X |  X  |  0-2  |" in loo_table
