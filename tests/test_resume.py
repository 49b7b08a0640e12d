"""Resumable runs: a deterministic CPU run killed with SIGKILL at several points and resumed gives
the records and the table of an uninterrupted run; pruning, markers, locks and bad resumes.

The killed runs are subprocesses. They train `ResumeProbe`, an ERM that draws from python's,
numpy's and torch's global RNGs every step and keeps a counter in `get_extra_state`, with a test
extension whose state feeds the records and a random training transform on Synthetic, so any
state that a resume failed to restore shows up as a different record. These are registered only
inside the subprocesses (`install`), never in the pytest process; so are the kill points
(tests/kill_points.py), which the production code knows nothing about.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kill_points
from domainbed.runs import checkpoint, model_io, persistence
from domainbed.algorithms.erm import ERM
from domainbed.data import InfiniteDataLoader
from domainbed.datasets.splits import SplitDataset
from domainbed.errors import UsageError
from domainbed.training.extensions import Extension
from domainbed.runs.run_dir import RunLock

REPO = Path(__file__).resolve().parents[1]
BOOT = ("import sys, kill_points, test_resume; test_resume.install(); kill_points.install_from_environment(); "
        "import train_all; sys.exit(train_all.main(sys.argv[1:]))")
ARGS = ["probe", "--dataset", "Synthetic", "--algorithm", "ResumeProbe", "--steps", "4", "--checkpoint_freq", "2",
        "--batch_size", "8", "--test_envs", "0", "1", "--deterministic", "--num_workers", "0", "--swad", "False"]


class ResumeProbe(ERM):
    """ERM on inputs with noise from all three global RNGs; the noise scale cycles with a counter
    that only `get_extra_state` saves."""

    def __init__(self, *args):
        super().__init__(*args)
        self.n_updates = 0

    def update(self, minibatches):
        scale = 0.1 * (1 + self.n_updates % 3) * (1 + random.random()) * (1 + float(np.random.rand()))
        self.n_updates += 1
        return super().update([(x + scale * torch.randn_like(x), y) for x, y in minibatches])

    def get_extra_state(self):
        return {"n_updates": self.n_updates}

    def set_extra_state(self, state):
        self.n_updates = state["n_updates"]


class ParameterTrace(Extension):
    """Accumulates a random projection of the weights after every step into the records."""

    def __init__(self):
        self.trace = 0.0

    def after_step(self, fold, step):
        weights = torch.cat([p.detach().flatten() for p in fold.algorithm.parameters()])
        self.trace += float(weights @ torch.randn_like(weights))

    def at_checkpoint(self, fold, step, record):
        record["trace"] = self.trace

    def state_dict(self):
        return {"trace": self.trace}

    def load_state_dict(self, state):
        self.trace = state["trace"]


class NoisyTransform:
    def __call__(self, x):
        return x.flip(-1) + 0.3 * torch.randn_like(x) if torch.rand(()) < 0.5 else x


def install():
    from domainbed.algorithms.registry import register_algorithm
    from domainbed.datasets.synthetic import Synthetic
    from domainbed.training.extensions import register_extension

    register_algorithm("ResumeProbe")(ResumeProbe)
    register_extension(1000)(lambda hparams: ParameterTrace())
    Synthetic.train_transform = NoisyTransform()


def _command(output_dir: Path, *extra, crash: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    env.pop(kill_points.KILL_ENV, None)
    if crash:
        env[kill_points.KILL_ENV] = crash
    return {"args": [sys.executable, "-c", BOOT, *ARGS, "--output_dir", str(output_dir), *extra],
            "cwd": REPO, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


def _train(output_dir: Path, *extra, crash: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(**_command(output_dir, *extra, crash=crash), timeout=600)


def _run_dir(output_dir: Path) -> Path:
    (run_dir,) = (output_dir / "Synthetic").iterdir()
    return run_dir


def _records(run_dir: Path) -> list:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_time")} for line in lines]


def _scalar_steps(log_dir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, started at once in the background (the killed runs are sequential)."""
    output_dir = tmp_path_factory.mktemp("reference")
    process = subprocess.Popen(**_command(output_dir))

    def wait() -> Path:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        return _run_dir(output_dir)

    yield wait
    process.kill()
    process.wait()


def _kill_resume_and_compare(output_dir: Path, kills, reference_dir) -> Path:
    for crash in kills:
        killed = _train(output_dir, "--resume", crash=crash)
        assert killed.returncode == -9, (crash, killed.returncode, killed.stderr[-3000:])
    resumed = _train(output_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    run_dir, reference_dir = _run_dir(output_dir), reference_dir()
    assert _records(run_dir) == _records(reference_dir)
    table, reference_table = (json.loads((d / "table.json").read_text()) for d in (run_dir, reference_dir))
    assert table == reference_table
    assert (run_dir / "table.txt").read_text() == (reference_dir / "table.txt").read_text()
    for env in (0, 1):
        model, reference_model = (persistence.load(d / "models" / f"TE{env}_final.pth")["model_dict"]
                                  for d in (run_dir, reference_dir))
        assert model.keys() == reference_model.keys()
        assert all(torch.equal(model[key], reference_model[key]) for key in model if torch.is_tensor(model[key]))
        assert model["_extra_state"] == reference_model["_extra_state"] == {"n_updates": 5}
    assert not list(run_dir.rglob("*.tmp"))
    assert sorted(p.name for p in (run_dir / "resume").iterdir()) == ["TE0_done.json", "TE1_done.json"]
    return run_dir


# slow: five train_all processes (about 90 s on 2 cores). In the default suite: in-process crashes at
# step and evaluation points resume exactly (test_exact_resume.py, and the quantization-swap test
# below), and SIGKILLed subprocesses resume in test_sweep.py's submitit test
@pytest.mark.slow
def test_killed_in_training_evaluation_and_checkpoint_writing_then_resumed_equals_uninterrupted(tmp_path, reference):
    # Steps 0..4 per fold, checkpoints at 0, 2, 4; folds TE0 then TE1. A kill counts its point
    # from the start of its own process.
    kills = [
        "step:3",        # in training: TE0 after the update of step 2, before its evaluation (last checkpoint: 0)
        "eval:2",        # during TE0's evaluation at step 4 (last checkpoint: step 2)
        "checkpoint:2",  # writing TE1's first checkpoint, after TE0 finished and TE1's record was appended
    ]
    run_dir = _kill_resume_and_compare(tmp_path, kills, reference)
    log = (run_dir / "log.txt").read_text()
    assert log.count("[TE0] resumed after step") == 2 and "[TE1] resumed" not in log
    assert "[TE0] finished earlier: skipped" in log
    assert "removed 1 unfinished temporary files" in log  # the checkpoint killed mid-write
    assert _scalar_steps(run_dir / "tensorboard" / "TE0", "checkpoint/test_in") == [0, 2, 4]
    assert _scalar_steps(run_dir / "tensorboard" / "TE0", "train/loss") == [0]


@pytest.mark.slow
def test_killed_between_record_and_checkpoint_and_before_the_finished_marker(tmp_path, reference):
    kills = [
        "record:2",  # TE0's step-2 record appended, its checkpoint not yet written
        "finish:1",  # TE0's final model saved, its finished-marker not yet written
    ]
    run_dir = _kill_resume_and_compare(tmp_path, kills, reference)
    assert (run_dir / "log.txt").read_text().count("[TE0] resumed after step") == 2


FAST = ["--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "4", "--checkpoint_freq", "2", "--batch_size", "8",
        "--test_envs", "0", "--deterministic"]


class Crash(Exception):
    pass


def test_resume_replays_a_quantization_swap_and_restores_weight_averaging(run_train_all, monkeypatch):
    """In-process: an exception at a kill point leaves the run directory as a kill would."""
    argv = [*FAST, "--quant", "1", "--q_steps", "1", "--swad", "LossValley"]
    reference = run_train_all("qs", *argv)

    def crash():
        raise Crash

    kill_points.install("step:4", crash, monkeypatch.setattr)  # after the update of step 3
    with pytest.raises(Crash):
        run_train_all("qs_crashed", *argv)
    monkeypatch.undo()
    resumed = run_train_all("qs_crashed", *argv, "--resume")
    log = (resumed["out_dir"] / "log.txt").read_text()
    assert "[TE0] resumed after step 2" in log and "layers quantized" in log.split("resumed after step 2")[0]
    assert _records(resumed["out_dir"]) == _records(reference["out_dir"])
    assert resumed["rows"] == reference["rows"] and "SWAD" in resumed["rows"]


def test_resume_without_a_run_starts_one_keeps_the_best_checkpoint_and_resumes_a_finished_run(run_train_all,
                                                                                             tmp_path):
    first = run_train_all("best", *FAST, "--keep_best", "--resume")
    assert first["out_dir"].parent == tmp_path / "out" / "Synthetic"
    records = _records(first["out_dir"])
    best = max(records, key=lambda r: r["train_out"])["step"]
    assert sorted(p.name for p in (first["out_dir"] / "resume").iterdir()) == ["TE0_done.json", f"TE0_step{best}.pth"]
    model, meta = model_io.load_model(first["out_dir"] / "resume" / f"TE0_step{best}.pth")
    assert meta["test_envs"] == [0] and meta["algorithm"] == "ERM"

    again = run_train_all("best", *FAST, "--resume")
    assert again["out_dir"] == first["out_dir"] and again["rows"] == first["rows"]
    assert "[TE0] finished earlier: skipped" in (first["out_dir"] / "log.txt").read_text()
    assert _records(first["out_dir"]) == records


def test_bad_resumes_are_one_line_errors(run_train_all, tmp_path):
    run_train_all("bad", *FAST, "--show")  # writes args.json and hparams.json, trains nothing
    (run_dir,) = (tmp_path / "out" / "Synthetic").iterdir()
    with pytest.raises(UsageError, match=r"settings differ \(--steps: 4 -> 6\)"):
        run_train_all("bad", *[a if a != "4" else "6" for a in FAST], "--resume")
    with pytest.raises(UsageError, match="hparam lr: 0.001 -> 0.01"):
        run_train_all("bad", *FAST, "--lr", "0.01", "--resume")
    with pytest.raises(UsageError, match="not a resumable run directory"):
        run_train_all("bad", *FAST, "--resume", str(tmp_path / "nowhere"))
    with RunLock(run_dir):
        with pytest.raises(UsageError, match="in use by another process"):
            run_train_all("bad", *FAST, "--resume", str(run_dir))


def test_checkpoint_of_other_settings_or_extensions_is_refused(tmp_path):
    from domainbed.training.trainer import FoldSettings

    settings = FoldSettings("ERM", [0], 5, 2, out_dir=tmp_path)
    saved = checkpoint.FoldCheckpoints(settings, {"lr": 0.1, "num_workers": 2}, {}, {})
    now = checkpoint.FoldCheckpoints(settings, {"lr": 0.2, "num_workers": 0}, {}, {})
    state = {"format": checkpoint.FORMAT, "path": tmp_path / "x.pth", "fingerprint": saved.fingerprint,
             "extensions": [{"type": "ParameterTrace", "state": {}}]}
    with pytest.raises(UsageError, match=r"other settings \(hparams\)"):
        now.restore(None, [], state)
    with pytest.raises(UsageError, match=r"extensions \['ParameterTrace'\], this run has \[\]"):
        checkpoint.FoldCheckpoints(settings, {"lr": 0.1, "num_workers": 0}, {}, {}).restore(None, [], state)
    state = {**state, "extensions": [], "meta": {"initial_weights": "a1"}}
    with pytest.raises(UsageError, match=r"started from other weights than this run starts from \(was its --init_path"):
        checkpoint.FoldCheckpoints(settings, {"lr": 0.1}, {"initial_weights": "b2"}, {}).restore(None, [], state)


def test_prune_keeps_the_newest_and_the_best(tmp_path):
    for step in (0, 2, 4, 6):
        checkpoint.checkpoint_path(tmp_path, [1], step).parent.mkdir(exist_ok=True)
        checkpoint.checkpoint_path(tmp_path, [1], step).write_bytes(b"x")
    checkpoint.checkpoint_path(tmp_path, [2], 0).write_bytes(b"other fold")
    records = [{"step": s, "train_out": a} for s, a in [(0, 0.2), (2, 0.7), (4, 0.7), (6, 0.5)]]
    checkpoint.prune(tmp_path, [1], records, keep_best=True)
    assert sorted(checkpoint.list_checkpoints(tmp_path, [1])) == [2, 4, 6]  # best: the earliest of the tie
    checkpoint.prune(tmp_path, [1], records, keep_best=False)
    assert sorted(checkpoint.list_checkpoints(tmp_path, [1])) == [4, 6]  # the two newest
    checkpoint.prune(tmp_path, [1], records, keep_best=False, keep_last=False)
    assert checkpoint.list_checkpoints(tmp_path, [1]) == {}
    assert list(checkpoint.list_checkpoints(tmp_path, [2])) == [0]  # another fold's, untouched


def test_rewrite_fold_records_replaces_only_that_fold(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [{"test_envs": [0], "step": 0}, {"test_envs": [1], "step": 0}, {"test_envs": [1], "step": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    checkpoint.rewrite_fold_records(path, [1], [{"test_envs": [1], "step": 0, "new": True}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"test_envs": [0], "step": 0}, {"test_envs": [1], "step": 0, "new": True}]


def test_augmentation_depends_on_step_only_with_any_workers():
    base = torch.utils.data.TensorDataset(torch.zeros(40, 3), torch.arange(40))
    split = SplitDataset(base, range(40), transform=lambda x: x + torch.randn(3) + float(np.random.rand()))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    main = InfiniteDataLoader(split, 4, 0, seed=5)
    batches = [next(main) for _ in range(5)]
    assert torch.equal(torch.get_rng_state(), before)  # loading in the main process leaves training's RNG alone
    workers = InfiniteDataLoader(split, 4, 2, seed=5, start_step=3)
    for step in (3, 4):
        x, y = next(workers)
        assert torch.equal(x, batches[step][0]) and torch.equal(y, batches[step][1])
    assert not torch.equal(batches[0][0], batches[1][0])


def test_a_run_saved_before_a_run_setting_existed_resumes_at_its_default(run_train_all, tmp_path):
    """An older run's hparams.json lacks the keys of run settings added since (and its args.json
    the flags): it was computed with their defaults, so it resumes; another value is refused."""
    run_train_all("old", *FAST, "--show")
    (run_dir,) = (tmp_path / "out" / "Synthetic").iterdir()
    hparams = json.loads((run_dir / "hparams.json").read_text())
    args = json.loads((run_dir / "args.json").read_text())
    del hparams["examples_per_domain"], args["download"]
    (run_dir / "hparams.json").write_text(json.dumps(hparams))
    (run_dir / "args.json").write_text(json.dumps(args))
    assert run_train_all("old", *FAST, "--resume", str(run_dir))["out_dir"] == run_dir
    with pytest.raises(UsageError, match="hparam examples_per_domain: 0 -> 10"):
        run_train_all("old", *FAST, "--examples_per_domain", "10", "--resume", str(run_dir))
