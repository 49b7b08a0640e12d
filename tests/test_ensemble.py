"""The tools over finished runs: ensembles of final models and SWAD's local flatness.

Two tiny Synthetic runs (ERM, three steps) are trained once for the module: A has folds TE0 and
TE1, B only TE0, so that ensembles of A and B cover the shared fold only.
"""

import json
import shutil

import pytest
import torch

from domainbed.runs import model_io, persistence
from domainbed.runs.reader import read_trained_run
from domainbed.runs.run_data import build_dataset, eval_splits
from domainbed.errors import UsageError
from domainbed.scripts import ensemble, flatness


def _train(out, seed, test_envs, name):
    import train_all

    result = train_all.run([name, "--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "2",
                            "--checkpoint_freq", "2", "--batch_size", "8", "--test_envs", *test_envs,
                            "--num_workers", "0", "--seed", str(seed), "--output_dir", str(out), "--swad", "False"])
    return result["out_dir"], result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ensemble_runs")
    # named apart: a run's name is its timestamp and name, and both may start within one second
    return [_train(base / "a", 0, ["0", "1"], "tiny_a"), _train(base / "b", 1, ["0"], "tiny_b")]


def quiet(*_):
    pass


def test_two_copies_of_a_run_give_its_accuracy(runs):
    _, (run_dir, trained) = runs
    result = ensemble.ensemble([run_dir, run_dir], device="cpu", num_workers=0, log=quiet)
    member, copy = result["members"]
    assert copy == f"{member} #2" and result["test_envs"] == [0]
    env = trained["environments"][0]
    # without averaging the final model is the last one: its last record, scored as EoA scores
    # an ensemble, over the whole held-out environment (in and out splits)
    last = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()][-1]
    splits = {split.name: len(split.dataset) for split in
              eval_splits(read_trained_run(run_dir), build_dataset(read_trained_run(run_dir)), 0)}
    whole = (last["env0_in"] * splits["env0_in"] + last["env0_out"] * splits["env0_out"]) / (
        splits["env0_in"] + splits["env0_out"])
    assert result["test"][result["ensemble"]][env] == pytest.approx(whole)
    assert result["test"][member][env] == pytest.approx(whole)
    assert result["inD"][result["ensemble"]][env] == trained["rows"]["last (inD)"][env]


def test_the_tool_names_the_model_files_it_used(runs):
    _, (run_dir, _) = runs
    said = []
    ensemble.ensemble([run_dir], device="cpu", num_workers=0, log=said.append)
    assert f"TE0 {run_dir.name}: {run_dir / 'models' / 'TE0_final.pth'}" in said


def test_ensembles_do_not_depend_on_the_order_of_the_runs(runs):
    (a, _), (b, _) = runs
    messages = []
    forward = ensemble.ensemble([a, b], device="cpu", num_workers=0, log=messages.append)
    backward = ensemble.ensemble([b, a], device="cpu", num_workers=0, log=quiet)
    assert forward["test_envs"] == [0] and any("skipping test domains [1]" in m for m in messages)
    assert forward["ensemble"] == backward["ensemble"] == "Ensemble (2 runs)"
    for table in ("test", "inD"):
        for name in (*forward["members"], forward["ensemble"]):
            assert forward[table][name] == backward[table][name]


def test_main_prints_the_tables(runs, capsys, tmp_path):
    (a, _), (b, _) = runs
    output = tmp_path / "ensemble.json"
    assert ensemble.main([str(a), "--device", "cpu", "--num_workers", "0", "--test_envs", "1",
                          "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "Ensemble (1 runs)" in printed and "In-domain accuracy" in printed
    assert json.loads(output.read_text())["test_envs"] == [1]
    assert ensemble.main([str(a), str(b), "--test_envs", "1"]) == 2
    assert "--test_envs [1]: not every run has a final model" in capsys.readouterr().err


def _copy_with_meta(run_dir, tmp_path, **changes):
    copy = tmp_path / f"{run_dir.name}_changed"
    shutil.copytree(run_dir, copy)
    for path in (copy / "models").glob("TE*_final.pth"):
        saved = persistence.load(path)
        saved["meta"].update(changes)
        persistence.save(saved, path)
    return copy


@pytest.mark.parametrize("changes, fragment", [
    ({"environments": ["a", "b", "c", "d"]}, "runs disagree on the domains: "),
    ({"num_classes": 5}, "runs disagree on the class count: "),
    ({"dataset": "PACS"}, "runs disagree on the dataset: "),
])
def test_runs_that_disagree_are_one_line_errors(runs, tmp_path, changes, fragment):
    (a, _), _ = runs
    changed = _copy_with_meta(a, tmp_path, **changes)
    with pytest.raises(UsageError, match=fragment) as error:
        ensemble.ensemble([a, changed], device="cpu", num_workers=0, log=quiet)
    assert "\n" not in str(error.value)


def test_runs_of_other_datasets_are_refused_before_loading(runs, tmp_path):
    (a, _), _ = runs
    changed = tmp_path / "other"
    shutil.copytree(a, changed)
    args = json.loads((changed / "args.json").read_text())
    (changed / "args.json").write_text(json.dumps({**args, "dataset": "PACS"}))
    with pytest.raises(UsageError, match=r"runs disagree on the dataset: .* is Synthetic, other is PACS"):
        ensemble.ensemble([a, changed], device="cpu", log=quiet)


def test_bad_run_directories(runs, tmp_path, capsys):
    (a, _), _ = runs
    with pytest.raises(UsageError, match="does not exist"):
        ensemble.ensemble([a, tmp_path / "missing"], log=quiet)
    empty = tmp_path / "empty"
    (empty / "models").mkdir(parents=True)
    with pytest.raises(UsageError, match="has no final models"):
        ensemble.ensemble([a, empty], log=quiet)
    only_one = tmp_path / "only_one"
    shutil.copytree(a, only_one)
    (only_one / "models" / "TE0_final.pth").unlink()
    (only_one / "models" / "TE1_final.pth").rename(only_one / "models" / "TE3_final.pth")
    with pytest.raises(UsageError, match="share no test domain"):
        ensemble.ensemble([a, only_one], log=quiet)
    assert ensemble.main([str(a), str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: run directory")


def test_flatness_writes_csv_and_plot_for_several_runs(runs, tmp_path):
    (a, _), (b, _) = runs
    rows = flatness.flatness([a, b], radii=[0, 2], n_directions=1, out=tmp_path / "flat",
                             test_envs=[0], device="cpu", num_workers=0, log=quiet)
    assert len(rows) == 2 * 1 * 1 * 2
    assert {row["run"] for row in rows} == {f"{a.name} (ERM)", f"{b.name} (ERM)"}
    assert all(row["increase"] == 0.0 for row in rows if row["radius"] == 0)
    lines = (tmp_path / "flat.csv").read_text().splitlines()
    assert lines[0] == "run,test_env,direction,radius,loss,increase" and len(lines) == 1 + len(rows)
    assert (tmp_path / "flat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    far = [row["increase"] for row in rows if row["radius"] == 2]
    assert all(increase != 0.0 for increase in far)


def test_flatness_leaves_the_model_as_it_was(runs):
    (a, _), _ = runs
    run = read_trained_run(a)
    dataset = build_dataset(run)
    model, _ = model_io.load_model(run.models[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = flatness.training_loss_evaluator(run, dataset, 0, "out", 64, 0, torch.device("cpu"))
    base = loss(model)
    rows = flatness.local_flatness(model, loss, [0, 1.0], 2, seed=0, test_env=0)
    assert [(d, r) for d, r, _, _ in rows] == [(0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert loss(model) == base
    with pytest.raises(UsageError, match="unknown --split 'val'"):
        flatness.flatness([a], split="val", log=quiet)
