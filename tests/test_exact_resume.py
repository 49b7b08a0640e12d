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
