"""scripts/gpu_check.sh: on a machine without CUDA it says so in one line and fails; the CUDA
tests it runs (marked `cuda`, skipped here) train on the GPU with either input pipeline and
in bf16."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FAST = ["--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "4", "--checkpoint_freq", "2", "--batch_size", "8",
        "--test_envs", "0", "--device", "cuda", "--deterministic"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the no-CUDA message cannot show")
def test_without_cuda_it_says_so_in_one_line_and_fails(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path / "work")}
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"gpu_check: no CUDA GPU visible to torch ({sys.executable}: torch.cuda.is_available() is False); "
        "nothing checked"]
    assert not (tmp_path / "work" / "status.tsv").exists()  # nothing ran


def test_the_script_is_valid_bash_and_documents_what_it_prints():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    header = SCRIPT.read_text().split("set -u")[0]
    assert "summary table" in header and "Exit status" in header and "pytest -m cuda" in header


def _records(result):
    return [json.loads(line) for line in (result["out_dir"] / "results.jsonl").read_text().splitlines()]


@pytest.mark.cuda
@needs_cuda
def test_both_input_pipelines_train_on_cuda(run_train_all):
    gpu = _records(run_train_all("gpu", *FAST, "--pipeline", "gpu"))
    classic = _records(run_train_all("classic", *FAST, "--pipeline", "classic"))
    assert [r["step"] for r in gpu] == [r["step"] for r in classic] == [0, 2, 4]
    for a, b in zip(gpu, classic):  # the same items in the same order; CUDA kernels may round apart
        assert math.isfinite(a["loss"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4)


@pytest.mark.cuda
@needs_cuda
def test_bf16_autocast_runs_on_cuda(run_train_all):
    result = run_train_all("bf16", *FAST, "--pipeline", "gpu", "--precision", "bf16")
    assert all(math.isfinite(r["loss"]) and 0 <= r["test_in"] <= 1 for r in _records(result))
    assert json.loads((result["out_dir"] / "hparams.json").read_text())["precision"] == "bf16"
