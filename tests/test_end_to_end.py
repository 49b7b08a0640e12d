"""train_all.py end to end on the in-memory Synthetic dataset, and its bad-input errors."""

import json

import pytest

from domainbed.results import selection

FAST = ["--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "4", "--checkpoint_freq", "2", "--batch_size", "8"]
ROWS = ["oracle", "iid", "last", "last (inD)", "iid (inD)"]
SWAD_ROWS = ["SWAD", "SWAD (inD)"]
TIMING = {"step_time", "eval_time"}


def _records(out_dir):
    return [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]


def test_all_folds_table_and_records_agree(run_train_all):
    result = run_train_all("e2e", *FAST)
    out_dir = result["out_dir"]
    table = json.loads((out_dir / "table.json").read_text())
    assert table["environments"] == ["d0", "d1", "d2", "d3"]
    assert list(table["rows"]) == ROWS + SWAD_ROWS  # SWAD is on by default, as in the seeds' config
    for row in ROWS:
        assert set(table["rows"][row]) == {"d0", "d1", "d2", "d3", "Avg."}
        assert "not a result" in table["rules"]["oracle"]
    records = _records(out_dir)
    assert len(records) == 4 * 3  # steps 0, 2, 4 in each of four folds
    for env, name in enumerate(table["environments"]):
        fold = [r for r in records if r["test_envs"] == [env]]
        assert [r["step"] for r in fold] == [0, 2, 4]
        for row, value in selection.select(fold).items():
            assert table["rows"][row][name] == pytest.approx(value)
        assert {f"env{env}_in", f"env{env}_out", "train_out", "tr_outloss"} <= set(fold[0])
        assert f"env{(env + 1) % 4}_in" not in fold[0]  # fast mode skips training domains' in-splits
    for row in ROWS:
        values = [table["rows"][row][n] for n in table["environments"]]
        assert table["rows"][row]["Avg."] == pytest.approx(sum(values) / 4)
    text = (out_dir / "table.txt").read_text()
    header = [cell.strip() for cell in text.splitlines()[1].strip("|").split("|")]
    assert header == ["Selection", "d0", "d1", "d2", "d3", "Avg."]
    iid = next(line for line in text.splitlines() if line.startswith("| iid "))
    assert iid.split("|")[2].strip() == f"{table['rows']['iid']['d0']:.3%}"  # SWAD's cell format
    log = (out_dir / "log.txt").read_text()
    assert "=== Summary ===" in log and text.splitlines()[0] in log
    hparams = json.loads((out_dir / "hparams.json").read_text())
    assert hparams["batch_size"] == 8 and hparams["swad"] == "LossValley"
    assert sorted(p.name for p in (out_dir / "models").iterdir()) == [f"TE{i}_final.pth" for i in range(4)]


def test_subset_of_folds_evalmode_all_and_model_save(run_train_all):
    result = run_train_all("sub", *FAST, "--test_envs", "1", "3", "--evalmode", "all", "--model_save", "2")
    assert result["environments"] == ["d1", "d3"]
    records = _records(result["out_dir"])
    assert "env0_in" in records[0] and "train_in" in records[0]
    saved = sorted(p.name for p in (result["out_dir"] / "checkpoints").iterdir())
    assert saved == ["TE1_2.pth", "TE1_4.pth", "TE3_2.pth", "TE3_4.pth"]


def test_deterministic_runs_give_identical_records(run_train_all):
    first = run_train_all("a", *FAST, "--test_envs", "0", "--deterministic", "--seed", "3")
    second = run_train_all("b", *FAST, "--test_envs", "0", "--deterministic", "--seed", "3")
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING} for r in records]  # noqa: E731
    assert strip(_records(first["out_dir"])) == strip(_records(second["out_dir"]))
    other = run_train_all("c", *FAST, "--test_envs", "0", "--deterministic", "--seed", "4")
    assert strip(_records(first["out_dir"])) != strip(_records(other["out_dir"]))


def test_fold_result_does_not_depend_on_earlier_folds(run_train_all):
    alone = run_train_all("alone", *FAST, "--test_envs", "2", "--deterministic")
    after = run_train_all("after", *FAST, "--test_envs", "0", "2", "--deterministic")
    fold = lambda result: [  # noqa: E731
        {k: v for k, v in r.items() if k not in TIMING} for r in _records(result["out_dir"]) if r["test_envs"] == [2]]
    assert fold(alone) == fold(after)


def test_show_prints_and_exits_without_training(run_train_all):
    result = run_train_all("show", *FAST, "--show")
    assert result == {}


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "Nope"], "unknown dataset 'Nope'; valid: "),
    (["--algorithm", "Nope"], "unknown algorithm 'Nope'; valid: "),
    (["--test_envs", "4"], "--test_envs 4 is out of range; valid for Synthetic: 0=d0, 1=d1, 2=d2, 3=d3"),
    (["--lr", "fast"], "hparam lr expects float"),
    (["--no_such_hparam", "1"], "unknown hparam 'no_such_hparam'"),
    (["--batch_size"], "hparam batch_size needs a value"),
])
def test_bad_input_is_one_line_error(capsys, tmp_path, argv, message):
    import train_all

    argv = ["bad", *FAST, "--output_dir", str(tmp_path), *argv]
    assert train_all.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_unknown_backbone_and_missing_data_dir(capsys, tmp_path):
    import train_all

    common = ["bad", "--dataset", "PACS", "--steps", "1", "--output_dir", str(tmp_path / "out")]
    assert train_all.main([*common, "--data_dir", str(tmp_path / "nowhere")]) == 2
    assert "data directory" in capsys.readouterr().err
    (tmp_path / "PACS").mkdir()
    for domain in ["art_painting", "cartoon", "photo", "sketch"]:
        (tmp_path / "PACS" / domain / "dog").mkdir(parents=True)
        from PIL import Image
        Image.new("RGB", (8, 8)).save(tmp_path / "PACS" / domain / "dog" / "1.png")
    assert train_all.main([*common, "--data_dir", str(tmp_path), "--backbone", "resnet5000", "--pretrained", "False"]) == 2
    err = capsys.readouterr().err
    assert "hparam backbone 'resnet5000' is out of range; valid: a registered backbone: " in err and "resnet18" in err


def test_swad_false_prints_no_averaging_rows(run_train_all):
    result = run_train_all("off", *FAST, "--test_envs", "0", "--swad", "False")
    assert list(result["rows"]) == ROWS


def test_swad_tolerance_ratio_by_leaf_name_is_recorded(run_train_all, tmp_path):
    assert run_train_all("tol", *FAST, "--tolerance_ratio", "0.2", "--show") == {}
    (run_dir,) = (tmp_path / "out" / "Synthetic").iterdir()
    hparams = json.loads((run_dir / "hparams.json").read_text())
    assert hparams["swad_kwargs"]["tolerance_ratio"] == 0.2 and hparams["swad_kwargs"]["n_converge"] == 3
    assert "\tswad_kwargs.tolerance_ratio: 0.2" in (run_dir / "log.txt").read_text()
