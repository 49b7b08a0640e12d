"""Exact resume in every configuration: a run stopped at a kill point (tests/kill_points.py) and
resumed gives the records and the table of the uninterrupted run, to the last bit.

Every stream of randomness must come from a generator that the run seeds and the checkpoint
restores: the training loaders' (a function of stream seed and step), the evaluation loader's
workers' (its own generator; with the global RNG a DataLoader with workers draws a base seed at
its first pass in a process, which shifts every later draw of a resumed run) and the algorithms'
own draws (RSC's masks, Mixstyle's mixing, DMG's gates: the global torch RNG, seeded per fold and
saved in the checkpoint). The runs use DataLoader workers, so the evaluation loader draws.
"""

import json

import pytest

import kill_points
from domainbed import algorithms

TINY = ["--dataset", "Synthetic", "--steps", "7", "--checkpoint_freq", "2", "--batch_size", "8",
        "--test_envs", "0", "--deterministic", "--num_workers", "1"]


class Crash(Exception):
    pass


def _records(out_dir) -> list:
    lines = (out_dir / "results.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_time")} for line in lines]


def _crash():
    raise Crash


def check_exact_resume(run_train_all, monkeypatch, argv, kills):
    reference = run_train_all("whole", *argv)
    for kill in kills:
        kill_points.install(kill, _crash, monkeypatch.setattr)
        with pytest.raises(Crash):
            run_train_all("stopped", *argv, "--resume")
        monkeypatch.undo()
    resumed = run_train_all("stopped", *argv, "--resume")
    assert "resumed after step" in (resumed["out_dir"] / "log.txt").read_text()
    assert _records(resumed["out_dir"]) == _records(reference["out_dir"])
    assert resumed["rows"] == reference["rows"]


@pytest.mark.parametrize("algorithm", ["RSC", "Mixstyle"])
def test_random_algorithms_with_workers_resume_exactly(run_train_all, monkeypatch, algorithm):
    # after the update of step 3: the resumed process evaluates at step 4 before training on
    check_exact_resume(run_train_all, monkeypatch, [*TINY, "--algorithm", algorithm, "--swad", "False"], ["step:4"])


CONFIGURATIONS = {
    "swad": ["--swad", "LossValley", "--swad_kwargs", "{n_converge: 1, n_tolerance: 2}"],
    "sma": ["--swad", "SMA", "--sma_start", "1"],
    "qtdog": ["--swad", "False", "--quant", "1", "--q_steps", "3"],
}


@pytest.mark.slow
@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
@pytest.mark.parametrize("algorithm", sorted(algorithms.ALGORITHMS))
def test_every_algorithm_resumes_exactly_with_workers_and_averaging_or_quantization(
        run_train_all, monkeypatch, algorithm, configuration):
    # killed during an evaluation (the one at step 2), then after the update of step 3
    check_exact_resume(run_train_all, monkeypatch,
                       [*TINY, "--algorithm", algorithm, *CONFIGURATIONS[configuration]], ["eval:2", "step:2"])


# --- the CUDA random state across machines ---------------------------------------------------

def _rng(**extra):
    from domainbed.runs.checkpoint import _rng_state

    return {**_rng_state("cpu"), **extra}


def test_the_run_devices_cuda_state_is_restored_whatever_the_gpu_count(monkeypatch):
    import torch

    from domainbed.runs.checkpoint import _set_rng_state

    restored, lines = [], []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    saved = torch.zeros(16, dtype=torch.uint8)
    _set_rng_state(_rng(device="cuda:3", cuda_device=saved), "cuda:0", lines.append)
    assert restored == [(saved, "cuda:0")] and lines == []


def test_a_checkpoint_without_the_devices_cuda_state_says_which_draws_will_differ(monkeypatch):
    import torch

    from domainbed.runs.checkpoint import _set_rng_state

    lines = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restored for another GPU count"))
    _set_rng_state(_rng(cuda=[torch.zeros(16, dtype=torch.uint8)] * 4), "cuda:1", lines.append, "[TE0] ")
    _set_rng_state(_rng(), "cuda:1", lines.append, "[TE0] ")
    _set_rng_state(_rng(), "cpu", lines.append, "[TE0] ")  # a CPU run draws nothing on a GPU
    assert lines == [
        f"[TE0] warning: the checkpoint holds no random state for cuda:1 (written {written}): random draws on the GPU "
        "(dropout, DMG's mask samples, RSC's random scores, ...) will differ from those of an uninterrupted run"
        for written in ("on a machine with 4 GPUs (this one has 2)", "by a run on cpu")]
