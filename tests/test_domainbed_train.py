"""`python -m domainbed.scripts.train`: DomainBed's train.py as a drop-in, on Debug28.

Its records, steps, done file and model; `--hparams`, several `--test_envs`, the uda split of
`--task domain_adaptation`; one-line errors for bad input, before the output directory exists.
The slow test runs DomainBed's 34 algorithm names through the command line of the issue.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed import misc
from domainbed.algorithms.erm import ERM
from domainbed.datasets import get_dataset_class
from domainbed.datasets.splits import split_dataset
from domainbed.runs import model_io
from domainbed.scripts import train
from domainbed.training.fold_splits import holdout, make_splits

REPO = Path(__file__).resolve().parents[1]
# DomainBed's algorithms.ALGORITHMS at its head
DOMAINBED_ALGORITHMS = [
    "ERM", "ERMPlusPlus", "Fish", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD", "DANN", "CDANN", "MTL",
    "SagNet", "ARM", "VREx", "RSC", "SD", "ANDMask", "SANDMask", "IGA", "SelfReg", "Fishr", "TRM", "IB_ERM",
    "IB_IRM", "CAD", "CondCAD", "Transfer", "CausIRL_CORAL", "CausIRL_MMD", "EQRM", "RDM", "ADRMX", "URM",
]
SMALL = '{"batch_size": 4}'


def train_run(out: Path, *argv, algorithm="ERM", hparams=SMALL) -> list:
    """Run the drop-in on Debug28 into `out`; its records."""
    extra = ["--hparams", hparams] if hparams is not None else []
    code = train.main(["--dataset", "Debug28", "--algorithm", algorithm, "--output_dir", str(out), *extra, *argv])
    assert code == 0
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def accuracy_keys(records: list) -> set:
    return {key for key in records[0] if key.endswith("_acc")}


def test_records_have_domainbed_keys_at_domainbed_steps(tmp_path):
    out = tmp_path / "out"
    records = train_run(out, "--test_env", "0", "--steps", "5", "--checkpoint_freq", "2")

    assert [record["step"] for record in records] == [0, 2, 4]
    for record in records:
        assert {"args", "hparams", "step", "epoch", "loss", "step_time", "mem_gb"} <= set(record)
        assert accuracy_keys([record]) == {f"env{i}_{part}_acc" for i in range(3) for part in ("in", "out")}
        assert not {"test_envs", "train_out", "test_in", "eval_time", "env0_in", "env0_in_loss"} & set(record)
        assert record["args"]["test_envs"] == [0] and record["args"]["algorithm"] == "ERM"
        assert record["hparams"]["batch_size"] == 4 and record["hparams"]["swad"] is False
    # DomainBed's epoch: the step over the smallest in-split (13 of Debug28's 16 items) in batches
    assert records[1]["epoch"] == pytest.approx(2 / (13 / 4))
    assert (out / "done").read_text() == "done"
    assert "Args:" in (out / "out.txt").read_text()
    model, meta = model_io.load_model(out / "model.pth")
    assert meta["algorithm"] == "ERM" and meta["test_envs"] == [0] and meta["num_domains"] == 2
    assert not list(out.glob("model_step*"))


def test_hparams_json_takes_effect_and_test_envs_are_held_out_together(tmp_path):
    out = tmp_path / "out"
    records = train_run(out, "--test_envs", "0", "1", "--steps", "2", "--skip_model_save",
                        hparams='{"lr": 1e-4, "batch_size": 4}')
    assert [record["step"] for record in records] == [0, 1]
    assert records[0]["hparams"]["lr"] == 1e-4 and records[0]["args"]["test_envs"] == [0, 1]
    assert not (out / "model.pth").exists() and (out / "done").exists()

    out = tmp_path / "every"
    train_run(out, "--test_envs", "0", "1", "--steps", "2", "--save_model_every_checkpoint",
              hparams='{"lr": 1e-4, "batch_size": 4}')
    model, meta = model_io.load_model(out / "model_step1.pth")
    assert meta["test_envs"] == [0, 1] and meta["num_domains"] == 1  # one training domain left
    assert model.optimizer.param_groups[0]["lr"] == 1e-4  # the algorithm was built with it
    assert {path.name for path in out.glob("model*.pth")} == {"model.pth", "model_step0.pth", "model_step1.pth"}


def test_domain_adaptation_evaluates_domainbeds_uda_split(tmp_path):
    records = train_run(tmp_path / "out", "--test_envs", "0", "--steps", "1", "--task", "domain_adaptation",
                        "--uda_holdout_fraction", "0.5", "--skip_model_save")
    assert accuracy_keys(records) == {"env0_uda_acc"} | {f"env{i}_{p}_acc" for i in range(3) for p in ("in", "out")}


def test_the_uda_split_holds_domainbeds_items():
    dataset = get_dataset_class("Debug28")("", [], {})
    _, eval_splits = make_splits(dataset, [1], 0.2, trial_seed=3, uda_holdout_fraction=0.5)
    splits = {split.name: split.dataset for split in eval_splits}
    # DomainBed: split_dataset(in_, int(len(in_) * f), seed_hash(trial_seed, env)) over in_'s positions
    _, in_ = holdout(dataset, 1, [1], 0.2, 3)
    positions_uda, _ = split_dataset(range(len(in_)), len(in_) // 2, misc.seed_hash(3, 1))
    assert splits["env1_uda"].keys == [in_.keys[p] for p in positions_uda.keys]
    assert sorted(splits["env1_uda"].keys + splits["env1_in"].keys) == sorted(in_.keys)
    assert "env0_uda" not in splits and "env2_uda" not in splits


class UnlabeledERM(ERM):
    """A method that would read DomainBed's unlabeled test-domain minibatches."""

    def update(self, minibatches, unlabeled=None):
        return super().update(minibatches)


@pytest.mark.parametrize("argv, message", [
    (["--algorithm", "NoSuchMethod"], "NoSuchMethod"),
    (["--dataset", "NoSuchData"], "NoSuchData"),
    (["--test_envs", "3"], "--test_envs 3 is out of range; valid for Debug28"),
    (["--test_envs", "0", "1", "2"], "leaves no training environment"),
    (["--test_envs", "1", "1"], "repeats 1"),
    (["--hparams", "{lr: 1}"], "--hparams '{lr: 1}' is not valid JSON"),
    (["--hparams", '{"lrr": 0.1}'], "unknown hparam 'lrr'"),
    (["--steps", "0"], "--steps 0 is out of range"),
    (["--task", "domain_adaptation"], "--uda_holdout_fraction 0 leaves none"),
    (["--task", "domain_adaptation", "--uda_holdout_fraction", "0.5",
      "--algorithm", "test_domainbed_train:UnlabeledERM"], "takes unlabeled data"),
    (["--dataset", "PACS"], "--data_dir is needed for PACS"),
])
def test_bad_input_is_one_line_before_the_output_directory(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert train.main(["--dataset", "Debug28", "--output_dir", str(out), *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error
    assert not out.exists()


def test_a_finished_output_directory_is_not_appended_to(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text("")
    assert train.main(["--dataset", "Debug28", "--output_dir", str(out)]) == 2
    assert "already holds a run (results.jsonl)" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["results.jsonl"]


def test_the_module_is_domainbeds_command_line():
    help_text = subprocess.run([sys.executable, "-m", "domainbed.scripts.train", "--help"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    for flag in ("--data_dir", "--dataset", "--algorithm", "--task", "--hparams", "--hparams_seed", "--trial_seed",
                 "--seed", "--steps", "--checkpoint_freq", "--test_envs", "--test_env", "--output_dir",
                 "--holdout_fraction", "--uda_holdout_fraction", "--skip_model_save",
                 "--save_model_every_checkpoint", "domain_adaptation", "model.pth"):
        assert flag in help_text


@pytest.mark.parametrize("algorithm", ["IRM", "CORAL"])
def test_a_penalty_method_records_its_statistics(tmp_path, algorithm):
    records = train_run(tmp_path / "out", "--test_env", "0", "--steps", "2", "--skip_model_save", algorithm=algorithm)
    assert [record["step"] for record in records] == [0, 1]
    assert {"loss", "penalty"} <= set(records[0])  # the update's statistics, as DomainBed records them


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", DOMAINBED_ALGORITHMS)
def test_every_domainbed_algorithm_trains_through_the_drop_in(tmp_path, algorithm):
    out = tmp_path / "out"
    records = train_run(out, "--test_env", "0", "--steps", "5", algorithm=algorithm, hparams=None)
    assert [record["step"] for record in records] == [0, 4]  # Debug28 evaluates every 100 steps, and the last
    assert all("loss" in record and "env0_in_acc" in record for record in records)
    assert (out / "done").exists() and (out / "model.pth").exists()


def test_under_torchrun_it_points_to_train_all(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    assert train.main(["--dataset", "Debug28", "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert "trains in one process, and torchrun started 2; for data parallelism run train_all.py" in error
    assert error.count("\n") == 1 and not out.exists()
