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


def _run_script(tmp_path, **env):
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path / "work"), **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)


def _says_why_in_one_line(result, tmp_path, python=sys.executable) -> str:
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    prefix, suffix = f"gpu_check: CUDA is not usable with {python}: ", "; nothing checked"
    assert line.startswith(prefix) and line.endswith(suffix), line
    assert not (tmp_path / "work" / "status.tsv").exists()  # nothing ran
    return line[len(prefix):-len(suffix)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the no-CUDA message cannot show")
def test_without_cuda_it_says_why_in_one_line_and_fails(tmp_path):
    why = _says_why_in_one_line(_run_script(tmp_path), tmp_path)
    assert why.startswith(f"torch {torch.__version__}")
    if torch.version.cuda is None:
        assert why.endswith("is built without CUDA")
    else:  # the driver's own reason, or no device
        assert f"(CUDA {torch.version.cuda})" in why and len(why) > len(f"torch {torch.__version__} (CUDA x): ")


def test_a_torch_that_does_not_import_is_named_not_taken_for_a_missing_gpu(tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libcudart.so.12: cannot open shared object file")\n')
    why = _says_why_in_one_line(_run_script(tmp_path, PYTHONPATH=str(tmp_path / "fake")), tmp_path)
    assert why == "cannot import torch: ImportError: libcudart.so.12: cannot open shared object file"
    missing = str(tmp_path / "no" / "python")
    assert "No such file" in _says_why_in_one_line(_run_script(tmp_path, PYTHON=missing), tmp_path, missing)


def test_the_python_is_the_projects_virtual_environment_by_default():
    text = SCRIPT.read_text()
    assert '[ -x "$ROOT/.venv/bin/python" ] && DEFAULT_PYTHON="$ROOT/.venv/bin/python"' in text
    assert 'PYTHON="${PYTHON:-$DEFAULT_PYTHON}"' in text
    assert "2>/dev/null" not in text


def test_every_test_that_needs_cuda_is_marked_so_the_script_runs_it():
    """gpu_check.sh runs `pytest -m cuda`: a test that skips without CUDA but is not marked would
    never run anywhere."""
    unmarked = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if line.startswith("def test_") and any("not torch.cuda.is_available()" in above or "@needs_cuda" in above
                                                      for above in lines[max(0, index - 4):index]):
                if not any("pytest.mark.cuda" in above for above in lines[max(0, index - 4):index]):
                    unmarked.append(f"{path.name}: {line}")
    assert unmarked == []


def test_the_script_is_valid_bash_and_documents_what_it_prints():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    header = SCRIPT.read_text().split("set -u")[0]
    assert "summary table" in header and "Exit status" in header and "pytest -m cuda" in header
    assert "--swad_bn_steps 20" in SCRIPT.read_text()  # the untrained demo's BatchNorm re-estimation stays short


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
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16 arithmetic (refused with one line: test_precision.py)")
    result = run_train_all("bf16", *FAST, "--pipeline", "gpu", "--precision", "bf16")
    assert all(math.isfinite(r["loss"]) and 0 <= r["test_in"] <= 1 for r in _records(result))
    assert json.loads((result["out_dir"] / "hparams.json").read_text())["precision"] == "bf16"
