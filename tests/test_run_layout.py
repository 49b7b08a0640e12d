"""The run directory has one owner: domainbed/runs/layout.py names its files, run_files.py reads
and writes them, reader.Run is what the tools over runs see."""

import json

import pytest

from domainbed.errors import UsageError
from domainbed.runs import layout, reader, run_files


def _run_dir(tmp_path, table=True, hparams=True):
    run_dir = tmp_path / "260101_00-00-00_demo"
    run_dir.mkdir()
    run_files.write_settings(run_dir, {"dataset": "Synthetic", "algorithm": "ERM", "trial_seed": 2}, {"lr": 0.1})
    if not hparams:
        layout.hparams_path(run_dir).unlink()
    for env, step in [(1, 4), (0, 2), (1, 2), (0, 0)]:
        run_files.append_record(layout.records_path(run_dir), {"test_envs": [env], "step": step})
    if table:
        run_files.write_table(run_dir, "TABLE", {"test_envs": [0, 1], "environments": ["a", "b"],
                                                 "rows": {"iid": {"a": 0.5, "b": 0.7, "Avg.": 0.6}}})
    models = layout.models_dir(run_dir)
    models.mkdir()
    for name in ("TE0_final.pth", "TE1_final.pth", "TE0,1_final.pth", "notes.txt"):
        (models / name).write_bytes(b"")
    return run_dir


def test_paths_of_a_fold():
    assert layout.fold_tag([0, 2]) == "TE0,2"
    assert layout.final_model_path("R", [1]).as_posix() == "R/models/TE1_final.pth"
    assert layout.compact_model_path("R", [1]).as_posix() == "R/models/compact/TE1_final.pth"
    assert layout.checkpoint_path("R", [1], 50).as_posix() == "R/resume/TE1_step50.pth"
    assert layout.checkpoint_pattern([1]).fullmatch("TE1_step50.pth")[1] == "50"
    assert not layout.checkpoint_pattern([1]).fullmatch("TE1,2_step50.pth")
    assert layout.done_path("R", [1]).as_posix() == "R/resume/TE1_done.json"
    assert layout.snapshot_path("R", [1], 7).as_posix() == "R/checkpoints/TE1_7.pth"
    assert layout.tensorboard_dir("R", [1]).as_posix() == "R/tensorboard/TE1"


def test_a_finished_run_reads_back(tmp_path):
    run_dir = _run_dir(tmp_path)
    run = reader.read_run(run_dir)
    assert (run.name, run.dataset, run.algorithm, run.trial_seed, run.hparams_seed) == (
        run_dir.name, "Synthetic", "ERM", 2, 0)
    assert run.hparams == {"lr": 0.1}
    assert {fold: [r["step"] for r in records] for fold, records in run.records.items()} == {(0,): [0, 2], (1,): [2, 4]}
    assert run.rows == {(0,): {"iid": 0.5}, (1,): {"iid": 0.7}} and run.names == {(0,): "a", (1,): "b"}
    assert run.models == {0: layout.final_model_path(run_dir, [0]), 1: layout.final_model_path(run_dir, [1])}
    assert run.finished and run.complete
    assert layout.table_text_path(run_dir).read_text() == "TABLE\n"
    assert [r.path for r in reader.find_runs(tmp_path)] == [run_dir]


def test_a_run_still_training_or_from_before_hparams_json(tmp_path):
    run = reader.read_run(_run_dir(tmp_path, table=False, hparams=False))
    assert run.hparams == {} and run.rows == {} and not run.finished and not run.complete


def test_a_finished_table_without_the_records_of_a_fold_is_incomplete(tmp_path):
    run_dir = _run_dir(tmp_path)
    layout.records_path(run_dir).write_text(json.dumps({"test_envs": [0], "step": 0}) + "\n")
    assert not reader.read_run(run_dir).complete


def test_tools_get_one_line_errors_for_what_is_not_a_trained_run(tmp_path):
    with pytest.raises(UsageError, match="run directory .* does not exist"):
        reader.read_trained_run(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=r"has no final models \(models/TE<i>_final.pth\)"):
        reader.read_trained_run(tmp_path)
    run_dir = _run_dir(tmp_path, hparams=False)
    with pytest.raises(UsageError, match="hparams.json does not exist; is .* a run directory"):
        reader.read_trained_run(run_dir)
    layout.args_path(run_dir).write_text("{not json")
    with pytest.raises(UsageError, match="args.json is not valid JSON"):
        reader.read_run(run_dir)


def test_missing_settings_name_the_files(tmp_path):
    assert run_files.missing_settings(tmp_path) == ["args.json", "hparams.json"]
    assert run_files.missing_settings(_run_dir(tmp_path)) == []
