"""QT-DoG end to end through train_all: every algorithm, weight averaging, the compact
checkpoint, EoQ, and QT-DoG's published command line on the real PACS."""

import json
from pathlib import Path

import pytest
import torch

from domainbed import algorithms
from domainbed.runs import model_io
from domainbed.quant import QuantConv2d
from domainbed.quant import extension as quant_extension
from domainbed.quant.compact import load_compact
from domainbed.quant.extension import compact_model_path

FAST = ["--dataset", "Synthetic", "--steps", "1", "--checkpoint_freq", "1", "--batch_size", "4",
        "--test_envs", "0", "--num_workers", "0"]
QUANT = ["--quant", "1", "--q_steps", "1"]


def _run(tmp_path, name, *argv):
    import train_all

    return train_all.run([name, *FAST, *QUANT, *argv, "--output_dir", str(tmp_path / "out")])


# slow: SelfReg (about 50 s on 2 cores) and ARM (about 13 s); the same swap runs with every other
# algorithm here, and test_contract.py quantizes ARM and SelfReg and trains them on
SLOW_UNDER_QUANTIZATION = {"ARM", "SelfReg"}


@pytest.mark.parametrize("algorithm", [
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_UNDER_QUANTIZATION else [])
    for name in sorted(algorithms.ALGORITHMS)])
def test_quant_composes_with_every_algorithm(tmp_path, algorithm):
    """Each registered algorithm trains on after the swap, with weight averaging."""
    result = _run(tmp_path, algorithm.lower(), "--algorithm", algorithm, "--swad", "LossValley")
    log = (result["out_dir"] / "log.txt").read_text()
    assert "layers quantized to 7 bits" in log
    assert {"SWAD", "SWAD (inD)"} <= set(result["rows"])
    model, meta = model_io.load_model(model_io.final_model_path(result["out_dir"], [0]))
    assert meta["transforms"]["quant"]["bits"] == 7
    assert any(isinstance(m, QuantConv2d) for m in model.modules())


@pytest.mark.parametrize("argv, message", [
    (["--q_exclude", "featurizer.conv9"], "q_exclude 'featurizer.conv9' names no quantizable layer"),
    (["--q_bits", "1"], "q_bits 1 is out of range; valid: an integer from 2 to 16"),
])
def test_bad_settings_stop_the_run_with_one_line(tmp_path, argv, message):
    from domainbed.errors import UsageError

    with pytest.raises(UsageError, match=message) as error:
        _run(tmp_path, "bad", *argv)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def quantized_runs(tmp_path_factory):
    """Two quantized ERM runs (trial seeds 0 and 1) with --model_save, and for the first, the
    latent weights and step sizes right after the swap."""
    snapshots = []
    original = quant_extension.Quantization.quantize

    def quantize_and_snapshot(self, fold):
        layers = original(self, fold)
        snapshots.append({name: (m.weight.detach().clone(), m.step_size.detach().clone())
                          for name, m in layers.items()})
        return layers

    tmp_path = tmp_path_factory.mktemp("quantized_runs")
    quant_extension.Quantization.quantize = quantize_and_snapshot
    try:
        runs = [_run(tmp_path, f"seed{seed}", "--trial_seed", str(seed), "--model_save", "0") for seed in (0, 1)]
    finally:
        quant_extension.Quantization.quantize = original
    return runs, snapshots[0]


def test_every_latent_weight_and_step_size_changes_after_the_swap(quantized_runs):
    (run, _), snapshot = quantized_runs
    model, _ = model_io.load_model(model_io.final_model_path(run["out_dir"], [0]))
    state = model.state_dict()
    assert "featurizer.conv1" in snapshot
    for name, (weight, step_size) in snapshot.items():
        assert not torch.equal(state[f"{name}.weight"], weight), name
        assert not torch.equal(state[f"{name}.step_size"], step_size), name


def test_size_is_logged_and_in_the_table(quantized_runs):
    (run, _), _ = quantized_runs
    log = (run["out_dir"] / "log.txt").read_text()
    assert "model 1.42 MB -> 0.32 MB (4.47x smaller)" in log
    table = (run["out_dir"] / "table.txt").read_text()
    assert "model 0.32 MB at 7 bits (4.47x smaller than float)" in table
    assert "4.47x smaller" in json.dumps(run["notes"])


def test_model_save_writes_a_compact_checkpoint_that_predicts_the_same(quantized_runs):
    (run, _), _ = quantized_runs
    full_path = model_io.final_model_path(run["out_dir"], [0])
    compact_path = compact_model_path(run["out_dir"], [0])
    full, meta = model_io.load_model(full_path)
    compact, compact_meta = load_compact(compact_path)
    assert compact_meta["transforms"] == meta["transforms"]
    assert compact_path.stat().st_size < full_path.stat().st_size / 4
    x = torch.randn(32, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(compact.predict(x), full.predict(x))


def test_eoq_ensembles_quantized_runs(quantized_runs):
    """EoQ: the ensemble tool sums the logits of quantized runs' final models. In-process: the
    command line needs model_io to import the extension modules that register rebuilds."""
    from domainbed.scripts import ensemble

    (first, second), _ = quantized_runs
    result = ensemble.ensemble([first["out_dir"], second["out_dir"]], num_workers=0, log=lambda *_: None)
    assert result["ensemble"] == "Ensemble (2 runs)"
    assert set(result["test"]) == {*result["members"], "Ensemble (2 runs)"}
    twice = ensemble.ensemble([first["out_dir"], first["out_dir"]], num_workers=0, log=lambda *_: None)
    assert twice["test"]["Ensemble (2 runs)"] == twice["test"][twice["members"][0]]


@pytest.mark.slow
def test_published_command_line_runs_with_steps_added(tmp_path, shared_data):
    """QT-DoG's README line, unchanged, with --steps and small-model settings appended."""
    import train_all

    published = ["exp", "--dataset", "PACS", "--data_dir", str(shared_data), "--quant", "1", "--q_steps", "100"]
    added = ["--steps", "3", "--pretrained", "False", "--image_size", "32", "--backbone", "resnet18",
             "--q_steps", "1", "--checkpoint_freq", "2", "--test_envs", "0", "--output_dir", str(tmp_path / "out")]
    result = train_all.run(published + added)
    assert result["test_envs"] == [0] and set(result["rows"]) >= {"oracle", "iid", "last"}
    hparams = json.loads((result["out_dir"] / "hparams.json").read_text())
    assert hparams["quant"] is True and hparams["q_steps"] == 1 and hparams["q_bits"] == 7
    log = (result["out_dir"] / "log.txt").read_text()
    assert "step 1: 20 layers quantized to 7 bits" in log


@pytest.mark.slow
def test_a_run_killed_after_the_swap_resumes_to_the_uninterrupted_records(tmp_path, kill_subprocesses_at):
    """The checkpoint replays the swap through the "quant" rebuild and restores the step sizes'
    optimizer state, so the resumed records equal those of a run never killed."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    args = ["r", "--dataset", "Synthetic", "--steps", "6", "--checkpoint_freq", "2", "--batch_size", "4",
            "--test_envs", "0", "--deterministic", "--num_workers", "0", *QUANT, "--resume"]

    def train(output_dir, crash=None):
        kill_subprocesses_at(crash)
        return subprocess.run([sys.executable, "train_all.py", *args, "--output_dir", str(output_dir)],
                              cwd=repo, capture_output=True, text=True, timeout=600)

    def records(output_dir):
        (run_dir,) = (output_dir / "Synthetic").iterdir()
        lines = (run_dir / "results.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("_time")} for line in lines]

    assert train(tmp_path / "whole").returncode == 0
    assert train(tmp_path / "killed", crash="step:4").returncode == -9
    resumed = train(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed after step 2" in resumed.stdout
    assert records(tmp_path / "killed") == records(tmp_path / "whole")
