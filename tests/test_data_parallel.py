"""Data-parallel training of one run (domainbed/distributed.py): what is refused before any
process group or run directory exists, and, marked slow, `torchrun --nproc_per_node 2` on the
CPU against one process. The step-by-step equality of every method that claims data parallelism
is the contract test's (tests/test_contract.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_all
from domainbed import distributed
from domainbed.algorithms import ALGORITHMS
from domainbed.algorithms.erm import ERM
from domainbed.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "Synthetic", "--steps", "6", "--checkpoint_freq", "2", "--test_envs", "0",
        "--device", "cpu", "--num_workers", "0"]


@pytest.fixture
def two_processes(monkeypatch):
    """This process as rank 0 of two, as torchrun would start it (no process group yet)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")


def test_a_method_that_does_not_claim_it_is_refused_in_one_line_before_the_run(two_processes, tmp_path, capsys):
    assert not ALGORITHMS["IRM"].data_parallel()
    code = train_all.main(["irm", *TINY, "--algorithm", "IRM", "--output_dir", str(tmp_path)])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2
    assert line.startswith("error: IRM trains on one process only (it does not declare DATA_PARALLEL")
    assert "valid under torchrun: " in line and "CORAL, " in line and "VREx" in line
    assert not any(tmp_path.iterdir())


def test_the_claim_is_not_inherited():
    class Subclass(ERM):
        pass

    assert ERM.data_parallel() and not Subclass.data_parallel()


def test_a_batch_that_does_not_split_evenly_is_refused_in_one_line(two_processes, tmp_path, capsys):
    assert train_all.main(["odd", *TINY, "--batch_size", "7", "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("error: batch_size 7 does not split into 2 equal shares, one per process; "
                                       "valid: a multiple of 2\n")


def test_trained_batchnorm_is_refused_on_the_cpu(two_processes):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(UsageError, match=r"^ERM trains the statistics of 1 BatchNorm layers \(1\), which "
                                         r"cannot be synchronised across processes on the CPU"):
        distributed.check_batchnorm(model, "cpu", "ERM")
    model[1].eval()
    model[1].train = lambda mode=True: model[1]  # frozen, as SWAD's ResNet keeps it: nothing to synchronise
    distributed.check_batchnorm(model, "cpu", "ERM")


def test_a_named_gpu_is_refused_under_torchrun(two_processes):
    with pytest.raises(UsageError, match="under torchrun each process takes the GPU of its LOCAL_RANK"):
        distributed.init("cuda:1")


def test_one_process_is_left_alone():
    assert distributed.world_size() == 1 and distributed.is_main()
    batches = [(torch.arange(4), torch.arange(4))]
    assert distributed.shard(batches) == batches
    x = torch.ones(3, requires_grad=True)
    assert distributed.global_mean(x) is x and distributed.all_gather(x) is x


def _torchrun(out: Path, name: str, *argv, env=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "train_all.py", name, *TINY, *argv, "--output_dir", str(out)]
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def _run_dir(out: Path, name: str) -> Path:
    (run_dir,) = (out / "Synthetic").glob(f"*_{name}")
    return run_dir


def _records(run_dir: Path) -> list:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_time")}
            for line in (run_dir / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_on_two_cpu_processes_prints_the_table_of_one_process(tmp_path, kill_subprocesses_at):
    """The same table (to fp32 rounding, here to the digit), printed once; the same losses in
    results.jsonl; a run stopped after a checkpoint and resumed under torchrun gives the
    records of the uninterrupted data-parallel run, to the last bit; a method that declares
    itself single-process is refused in one line."""
    argv = ["--algorithm", "CORAL", "--swad", "False"]
    alone = train_all.run(["one", *TINY, *argv, "--output_dir", str(tmp_path)])
    two = _torchrun(tmp_path, "two", *argv)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("=== Summary ===") == 1
    table = json.loads((_run_dir(tmp_path, "two") / "table.json").read_text())
    for row, cells in alone["rows"].items():
        assert table["rows"][row] == pytest.approx(cells, abs=1e-6), row
    pairs = list(zip(_records(alone["out_dir"]), _records(_run_dir(tmp_path, "two"))))
    assert len(pairs) == 4
    for one, other in pairs:
        assert other["loss"] == pytest.approx(one["loss"], rel=1e-5)
        assert other["penalty"] == pytest.approx(one["penalty"], rel=1e-4, abs=1e-7)

    kill_subprocesses_at("step:4")  # after the update of step 3: the checkpoint of step 2 is on disk
    stopped = _torchrun(tmp_path, "stopped", *argv)
    assert stopped.returncode != 0
    kill_subprocesses_at(None)
    resumed = _torchrun(tmp_path, "stopped", *argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after step 2" in (_run_dir(tmp_path, "stopped") / "log.txt").read_text()
    assert _records(_run_dir(tmp_path, "stopped")) == _records(_run_dir(tmp_path, "two"))

    refused = _torchrun(tmp_path, "irm", "--algorithm", "IRM")
    assert refused.returncode != 0
    assert [line for line in refused.stderr.splitlines() if line.startswith("error:")] == [
        line for line in refused.stderr.splitlines() if "IRM trains on one process only" in line]
    assert refused.stderr.count("IRM trains on one process only") == 1


def test_the_docs_name_every_method_in_the_table_of_its_claim():
    """docs/data_parallel.md: the methods that declare DATA_PARALLEL in the first table, every
    other one in the second with its reason."""
    text = (REPO / "docs" / "data_parallel.md").read_text()
    exact, refused = text.split("Not data-parallel (refused under torchrun)")

    def named(part):
        rows = [line.split("|")[1] for line in part.splitlines() if line.startswith("| `")]
        return {name.strip(" `") for row in rows for name in row.split(",")}

    claiming = {name for name, cls in ALGORITHMS.items() if cls.data_parallel()}
    assert named(exact) == claiming
    assert named(refused) == set(ALGORITHMS) - claiming
