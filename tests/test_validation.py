"""Every bad flag or hparam value is one line on stderr, exit 2, no traceback, no run directory;
a non-finite training loss, validation loss or accuracy, or selection row stops the run with one
line, keeps the records up to it and the checkpoints written before it, and builds no table."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_all
from domainbed import algorithms
from domainbed.errors import UsageError
from domainbed.hparams.checks import check_run_settings
from domainbed.training.finite_guard import FiniteGuard, FiniteRows
from domainbed.training.finite_numbers import NonFiniteNumberError

TINY = ["--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "2", "--checkpoint_freq", "1",
        "--test_envs", "0", "--swad", "False", "--num_workers", "0"]

BAD_VALUES = [
    (["--test_envs", "0", "0"], "--test_envs"),
    (["--test_envs", "1", "2", "1"], "--test_envs"),
    (["--test_envs", "-1"], "--test_envs"),
    (["--test_envs", "4"], "--test_envs"),
    (["--lr", "nan"], "lr"),
    (["--lr", "-1"], "lr"),
    (["--lr", "inf"], "lr"),
    (["--lr", "0"], "lr"),
    (["--batch_size", "0"], "batch_size"),
    (["--batch_size", "-3"], "batch_size"),
    (["--image_size", "0"], "image_size"),
    (["--image_size", "-8"], "image_size"),
    (["--holdout_fraction", "1.5"], "--holdout_fraction"),
    (["--holdout_fraction", "1.0"], "--holdout_fraction"),
    (["--holdout_fraction", "-0.2"], "--holdout_fraction"),
    (["--holdout_fraction", "0"], "--holdout_fraction"),
    (["--holdout_fraction", "nan"], "--holdout_fraction"),
    (["--device", "bogus"], "--device"),
    (["--device", "cuda:99"], "--device"),
    (["--test_batchsize", "0"], "test_batchsize"),
    (["--steps", "0"], "--steps"),
    (["--steps", "-5"], "--steps"),
    (["--checkpoint_freq", "0"], "--checkpoint_freq"),
    (["--resnet_dropout", "1.5"], "resnet_dropout"),
    (["--mlp_dropout", "-0.1"], "mlp_dropout"),
    (["--weight_decay", "-1e-4"], "weight_decay"),
    (["--weight_decay", "inf"], "weight_decay"),
    (["--optimizer", "lion"], "optimizer"),
    (["--precision", "fp8"], "precision"),
    (["--num_workers", "-2"], "num_workers"),
    (["--tolerance_ratio", "-0.3"], "tolerance_ratio"),
    (["--swad_kwargs.n_converge", "0"], "n_converge"),
    (["--q_bits", "1"], "q_bits"),
    (["--model_save", "-1"], "--model_save"),
    (["--swad", "Foo"], "swad"),
    (["--swad_kwargs.n_tolerance", "0"], "n_tolerance"),
    (["--swad_kwargs", "{n_converge: [1"], "swad_kwargs"),
    (["--swad_kwargs", "{n_convergence: 3}"], "swad_kwargs.n_convergence"),
    (["--swad_kwargs.bookkeeping", "lazy"], "bookkeeping"),
    (["--sma_start", "-1"], "sma_start"),
    (["--q_steps", "-1"], "q_steps"),
    (["--pipeline", "fast"], "pipeline"),
    (["--backbone", "resnet5"], "backbone"),
    (["--algorithm", "RSC", "--rsc_mode", "diagonal"], "rsc_mode"),
    (["--algorithm", "DMG", "--mask_init", "zeros"], "mask_init"),
    (["--algorithm", "DMG", "--mask_layers", "bogus"], "mask layer"),  # what only the built model can tell
    (["--quant", "1", "--q_exclude", "nothing"], "q_exclude"),
    (["--algorithm", "no.such.module:Method"], "no.such.module"),
    (["--algorithm", "domainbed.misc:seed_hash"], "algorithm"),
    (["--algorithm", "torch.nn:Linear"], "torch.nn:Linear is not an algorithm"),
    (["--algorithm", "domainbed.algorithms.erm:NoSuchMethod"], "'NoSuchMethod'"),
    (["--algorithm", "domainbed.algorithms.erm:"], "names no object"),
]


def _run_cli(tmp_path, capsys, argv):
    out = tmp_path / "out"
    code = train_all.main(["bad", *TINY, *argv, "--output_dir", str(out)])
    captured = capsys.readouterr()
    return code, captured.err, out


def _no_run_directory(out):
    return not out.exists() or not any(path.is_dir() for path in out.rglob("*") if path.parent != out)


@pytest.mark.parametrize("argv, named", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_value_is_one_line_exit_2(tmp_path, capsys, argv, named):
    code, err, out = _run_cli(tmp_path, capsys, argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and named in lines[0] and "valid" in lines[0]
    assert "Traceback" not in err
    assert _no_run_directory(out), sorted(out.rglob("*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    code, err, out = _run_cli(tmp_path, capsys, ["--device", "cuda"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no CUDA device" in err and "valid: auto, cpu" in err
    assert _no_run_directory(out)


@pytest.mark.parametrize("algorithm, hparam, bad", [
    ("ERM", "momentum", 1.0), ("GradSurgery", "n_parts", 0), ("SAM", "rho", -0.05), ("Mixstyle", "mixstyle_p", 1.5),
    ("Mixstyle2", "mixstyle_p", 1.5), ("RSC", "rsc_batch_percent", 2.0), ("DMG", "mask_lr", math.nan),
    ("CausIRL_MMD", "mmd_gamma", -1.0)])
def test_algorithm_hparams_have_their_declared_ranges(algorithm, hparam, bad):
    args = train_all.make_parser().parse_args(["x", "--dataset", "Synthetic", "--algorithm", algorithm])
    with pytest.raises(UsageError, match=f"hparam {hparam} .* out of range; valid"):
        check_run_settings(args, {hparam: bad})


def test_bad_values_are_found_before_the_data_is_read(tmp_path, capsys):
    """PACS from a folder that does not exist: the bad value is the error, not the data."""
    out = tmp_path / "out"
    code = train_all.main(["bad", "--dataset", "PACS", "--data_dir", str(tmp_path / "nowhere"), "--swad", "Foo",
                           "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: hparam swad 'Foo' is out of range; valid: one of LossValley")
    assert not out.exists()


def test_defaults_of_every_algorithm_are_valid():
    from domainbed.hparams.config import run_hparams

    args = train_all.make_parser().parse_args(["x", "--dataset", "PACS"])
    for name in algorithms.ALGORITHMS:
        for dataset in ("PACS", "Synthetic"):
            args.algorithm = name
            check_run_settings(args, run_hparams(name, dataset))


@pytest.mark.parametrize("steps, checkpoint_freq, n_steps", [(5000, 100, 5001), (200, 100, 201), (250, 100, 250),
                                                           (5, 100, 5), (1, 1, 2)])
def test_steps_are_honoured_and_a_multiple_of_checkpoint_freq_gets_swads_extra_step(steps, checkpoint_freq, n_steps):
    from domainbed.training.experiment import _schedule

    args = SimpleNamespace(test_envs=None, steps=steps, checkpoint_freq=checkpoint_freq)
    assert _schedule(args, [None] * 4)[1] == n_steps


def test_steps_below_checkpoint_freq_train_those_steps_and_evaluate_the_last(run_train_all, capsys):
    result = run_train_all("few", *TINY, "--steps", "5", "--checkpoint_freq", "100", "--swad", "LossValley",
                           "--batch_size", "8")
    records = [json.loads(line) for line in (result["out_dir"] / "results.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 4]
    assert "n_steps = 5, checkpoint_freq = 100" in (result["out_dir"] / "log.txt").read_text()
    assert "warning" not in capsys.readouterr().err


class _NaNFromStep3(algorithms.get_algorithm_class("ERM")):
    """ERM whose loss is NaN from step 3 on."""

    def update(self, minibatches):
        stats = super().update(minibatches)
        self.calls = getattr(self, "calls", 0) + 1
        return {**stats, "loss": math.nan} if self.calls > 3 else stats


class _NaNPredictionsFromStep4(algorithms.get_algorithm_class("ERM")):
    """ERM whose training loss stays finite while its predictions in eval mode are NaN from step 4
    on: the `--lr 1e3` run whose validation loss was NaN while training went on."""

    def update(self, minibatches):
        self.calls = getattr(self, "calls", 0) + 1
        return super().update(minibatches)

    def predict(self, x, env=None):
        logits = super().predict(x, env)
        return torch.full_like(logits, math.nan) if not self.training and self.calls > 4 else logits


def _train_until_error(tmp_path, capsys, *argv):
    """(exit code, stderr lines, run directory) of a 6-step run with checkpoints at steps 0, 2, 4, 5."""
    out = tmp_path / "out"
    code = train_all.main(["nan", "--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "6",
                           "--checkpoint_freq", "2", "--test_envs", "0", "--num_workers", "0",
                           "--output_dir", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    (run_dir,) = (out / "Synthetic").iterdir()
    return code, err, run_dir


def _checkpoint_steps(run_dir) -> set:
    return {int(path.stem.rsplit("step", 1)[1]) for path in (run_dir / "resume").glob("*.pth")}


def _no_table(run_dir) -> bool:
    return not (run_dir / "table.json").exists() and not (run_dir / "table.txt").exists()


def test_nonfinite_loss_stops_the_run_and_keeps_earlier_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(algorithms.ALGORITHMS, "ERM", _NaNFromStep3)
    code, err, run_dir = _train_until_error(tmp_path, capsys, "--swad", "False")
    assert code == 2
    assert len(err) == 1 and "step 3: training loss = nan" in err[0], err
    assert _checkpoint_steps(run_dir) and _checkpoint_steps(run_dir) <= {0, 2}
    steps = [line for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(steps) == 2  # the records of steps 0 and 2, none after the NaN
    assert _no_table(run_dir)


@pytest.mark.parametrize("swad", ["False", "LossValley"])
def test_nonfinite_validation_loss_stops_the_run_with_its_record_written(tmp_path, capsys, monkeypatch, swad):
    monkeypatch.setitem(algorithms.ALGORITHMS, "ERM", _NaNPredictionsFromStep4)
    code, err, run_dir = _train_until_error(tmp_path, capsys, "--swad", swad)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: [TE0] evaluation at step 4: ") and "tr_outloss = nan" in err[0], err
    assert "results.jsonl keeps this record" in err[0]
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 2, 4]
    assert all(math.isfinite(record["tr_outloss"]) for record in records[:2]) and math.isnan(records[2]["tr_outloss"])
    assert _checkpoint_steps(run_dir) and _checkpoint_steps(run_dir) <= {0, 2}
    assert _no_table(run_dir)
    log = (run_dir / "log.txt").read_text()
    assert "nan" not in "".join(line for line in log.splitlines() if "SWAD" in line)  # averaging never saw it
    assert "[TE0] oracle =" not in log and "[TE0] iid =" not in log and "=== Summary ===" not in log


def test_lr_1e3_on_images_stops_at_the_first_evaluation_with_no_table(tmp_path, capsys):
    """The case the issue measured: ResNet-18 on tiny PACS-layout images with SWAD on, where the
    training loss stays finite and the validation loss is NaN from step 0."""
    from PIL import Image

    rng = np.random.RandomState(0)
    for domain in ("art_painting", "cartoon", "photo", "sketch"):
        for label in ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"):
            folder = tmp_path / "PACS" / domain / label
            folder.mkdir(parents=True)
            for index in range(2):
                Image.fromarray((rng.rand(16, 16, 3) * 255).astype("uint8")).save(folder / f"{index}.jpg")
    out = tmp_path / "out"
    code = train_all.main(["lr", "--dataset", "PACS", "--data_dir", str(tmp_path), "--backbone", "resnet18",
                           "--pretrained", "False", "--image_size", "16", "--lr", "1e3", "--steps", "4",
                           "--checkpoint_freq", "2", "--test_envs", "0", "--num_workers", "0", "--batch_size", "4",
                           "--output_dir", str(out)])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("error: [TE0] evaluation at step 0: tr_outloss = nan")
    (run_dir,) = (out / "PACS").iterdir()
    assert _no_table(run_dir) and "SWAD" not in (run_dir / "log.txt").read_text().split("HParams:")[1]


def _fake_fold():
    return SimpleNamespace(name="TE0", hparams={"lr": 1000.0}, stats={})


def test_a_nonfinite_validation_accuracy_is_refused_at_the_checkpoint():
    """The evaluator's accuracies are counts over sizes, finite by construction; the check covers
    every number of the record all the same (an outside evaluator or extension could break that)."""
    record = {"test_envs": [0], "step": 4, "loss": 0.9, "train_out": math.nan, "test_in": 0.5, "tr_outloss": 1.0}
    with pytest.raises(NonFiniteNumberError, match=r"^\[TE0\] evaluation at step 4: train_out = nan; "):
        FiniteGuard().at_checkpoint(_fake_fold(), 4, record)
    FiniteGuard().at_checkpoint(_fake_fold(), 4, {**record, "train_out": 0.5})


def test_an_infinite_training_loss_of_any_name_is_refused():
    stats = {"loss": 1.0, "penalty_loss": math.inf, "penalty": math.inf}
    with pytest.raises(NonFiniteNumberError, match=r"step 7: training penalty_loss = inf; .*lower the lr \(now 1000.0\)"):
        FiniteGuard().on_stats(_fake_fold(), 7, stats)
    FiniteGuard().on_stats(_fake_fold(), 7, {**stats, "penalty_loss": 1.0})


class _DeviceNaNFromStep3(_NaNFromStep3):
    """Its NaN is a tensor, as the stats of the methods are."""

    def update(self, minibatches):
        return {key: torch.as_tensor(value) for key, value in super().update(minibatches).items()}


def test_a_nonfinite_loss_is_named_by_its_step_when_the_stats_are_read(tmp_path, capsys, monkeypatch):
    """The trainer reads the stats on the host only every tb_freq steps and at checkpoints: a NaN
    at step 3 is found at the checkpoint of step 4 and named by step 3, before step 4's record."""
    monkeypatch.setitem(algorithms.ALGORITHMS, "ERM", _DeviceNaNFromStep3)
    code, err, run_dir = _train_until_error(tmp_path, capsys, "--swad", "False", "--tb_freq", "0")
    assert code == 2 and len(err) == 1 and "step 3: training loss = nan" in err[0], err
    assert [json.loads(line)["step"] for line in (run_dir / "results.jsonl").read_text().splitlines()] == [0, 2]
    assert _checkpoint_steps(run_dir) <= {0, 2}


def test_no_selection_row_is_a_nonfinite_number():
    with pytest.raises(NonFiniteNumberError, match=r"^\[TE0\] selection row: SWAD = nan; no table is built on it"):
        FiniteRows().finish(_fake_fold(), {"iid": 0.5, "SWAD": math.nan})
    FiniteRows().finish(_fake_fold(), {"iid": 0.5, "SWAD": 0.6})


def test_nonfinite_checks_run_around_every_other_extension():
    import domainbed.averaging.extension
    import domainbed.quant.extension  # noqa: F401  (registers the extensions whose order matters)
    from domainbed.training.extensions import EXTENSION_FACTORIES

    orders = {factory.__name__: order for order, factory in EXTENSION_FACTORIES}
    assert orders["finite_numbers"] == min(orders.values()) and orders["finite_rows"] == max(orders.values())
