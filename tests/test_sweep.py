"""Sweeps on Synthetic: job hashing and hparams, status counts, and launches that are killed or
fail half-way and are relaunched (local, multi_gpu on fake GPUs, submitit's local executor) end
with every job done exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train_all
from domainbed import hparams_registry, misc
from domainbed.errors import UsageError
from domainbed.scripts import sweep

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--", "--batch_size", "8", "--test_envs", "0", "--deterministic"]


def _argv(command, output_dir, *extra, n_hparams=2, n_trials=1):
    return [command, "--datasets", "Synthetic", "--algorithms", "ERM", "--n_hparams", str(n_hparams),
            "--n_trials", str(n_trials), "--output_dir", str(output_dir), "--steps", "2", "--checkpoint_freq", "1",
            *extra, *TRAIN]


def _check_done_exactly_once(job):
    (run_dir,) = (job.directory / "Synthetic").iterdir()
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [(r["test_envs"], r["step"]) for r in records] == [([0], 0), ([0], 1), ([0], 2)]
    assert json.loads((run_dir / "table.json").read_text())["test_envs"] == [0]
    args = json.loads((run_dir / "args.json").read_text())
    assert (args["hparams_seed"], args["trial_seed"]) == (job.train_args["hparams_seed"], job.train_args["trial_seed"])
    return (run_dir / "log.txt").read_text()


def test_jobs_are_named_by_a_hash_of_their_arguments(tmp_path):
    jobs = sweep.make_jobs(sweep.parse_args(_argv("launch", tmp_path, n_hparams=3, n_trials=2)))
    assert len(jobs) == 6 and len({job.directory for job in jobs}) == 6
    again = sweep.make_jobs(sweep.parse_args(_argv("launch", tmp_path, n_hparams=3, n_trials=2)))
    assert [job.directory for job in again] == [job.directory for job in jobs]
    other = sweep.make_jobs(sweep.parse_args(_argv("launch", tmp_path, "--data_dir", "elsewhere", n_hparams=3,
                                                   n_trials=2)))
    assert [job.directory for job in other] == [job.directory for job in jobs]  # data may move
    job = next(j for j in jobs if (j.train_args["hparams_seed"], j.train_args["trial_seed"]) == (2, 1))
    assert job.train_args["seed"] == misc.seed_hash("Synthetic", "ERM", 2, 1)
    command = job.command("DATA")
    assert command[-1] == "--resume" and command[2] == "ERM_hp2_trial1"
    assert command[command.index("--output_dir") + 1] == str(job.directory)
    assert command[command.index("--hparams_seed") + 1] == "2" and "--batch_size" in command


def test_hparams_seed_zero_is_the_defaults_and_others_are_domainbeds_random_draw(tmp_path):
    # Each call its own output directory: run directories are named by the second, so two calls
    # into one directory a second apart (a loaded machine) leave two runs there.
    def hparams_of(hparams_seed, trial_seed):
        output_dir = tmp_path / f"{hparams_seed}_{trial_seed}"
        train_all.run(["h", "--dataset", "Synthetic", "--hparams_seed", str(hparams_seed), "--trial_seed",
                       str(trial_seed), "--output_dir", str(output_dir), "--show"])
        (run_dir,) = (output_dir / "Synthetic").iterdir()
        return json.loads((run_dir / "hparams.json").read_text())

    assert hparams_of(0, 3)["lr"] == hparams_registry.default_hparams("ERM", "Synthetic")["lr"]
    drawn = hparams_registry.random_hparams("ERM", "Synthetic", misc.seed_hash(4, 3))
    hparams = hparams_of(4, 3)
    assert hparams["lr"] == drawn["lr"] != hparams_of(4, 2)["lr"]
    assert hparams["batch_size"] == drawn["batch_size"]
    with pytest.raises(UsageError, match="--hparams_seed -1 is negative"):
        hparams_of(-1, 0)


def test_status_dry_run_and_bad_arguments(tmp_path, capsys, monkeypatch):
    result = sweep.run(_argv("launch", tmp_path, "--dry_run"))
    assert result["counts"] == {"done": 0, "failed": 0, "incomplete": 0, "not launched": 2}
    assert capsys.readouterr().out.count("train_all.py ERM_hp") == 2
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    jobs = result["jobs"]
    jobs[0].directory.mkdir(parents=True)
    jobs[1].directory.mkdir(parents=True)
    (jobs[1].directory / "done").touch()
    counts = sweep.run(_argv("status", tmp_path))["counts"]
    assert counts == {"done": 1, "failed": 0, "incomplete": 1, "not launched": 0}
    assert "1 incomplete" in capsys.readouterr().out
    sweep.run(_argv("delete_incomplete", tmp_path, "--skip_confirmation"))
    assert not jobs[0].directory.exists() and jobs[1].directory.exists()
    with pytest.raises(UsageError, match="unknown launcher 'pbs'"):
        sweep.run(_argv("launch", tmp_path, "--launcher", "pbs"))
    with pytest.raises(UsageError, match="unknown algorithm 'Nope'"):
        sweep.run(["status", "--datasets", "Synthetic", "--algorithms", "Nope", "--output_dir", str(tmp_path)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UsageError, match="needs at least one visible GPU"):
        sweep.run(_argv("launch", tmp_path, "--launcher", "multi_gpu"))
    assert sweep.main(_argv("launch", tmp_path, "--launcher", "pbs")) == 2


# slow: about 40 s on 2 cores; killed jobs relaunched and resumed stay in the default suite with
# test_submitit_local_executor_jobs_failing_half_way_resume_on_relaunch
@pytest.mark.slow
def test_local_sweep_killed_half_way_and_relaunched_on_two_fake_gpus(tmp_path, monkeypatch, capsys):
    argv = _argv("launch", tmp_path, n_hparams=3)
    launcher = subprocess.Popen([sys.executable, "-m", "domainbed.scripts.sweep", *argv], cwd=REPO,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = sweep.make_jobs(sweep.parse_args(argv))
    deadline = time.monotonic() + 300
    while not (jobs[0].directory / "done").exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and the job it runs, as a lost node
    launcher.wait()
    counts = sweep.count_states(jobs)
    assert counts["done"] >= 1 and sum(counts.values()) == 3

    # Relaunched on two "GPUs" (CPU here: train_all.py falls back to it), the rest run in parallel.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    capsys.readouterr()
    result = sweep.run(_argv("launch", tmp_path, "--launcher", "multi_gpu", n_hparams=3))
    assert result["failed"] == []
    assert result["counts"] == {"done": 3, "failed": 0, "incomplete": 0, "not launched": 0}
    finished = [line for line in capsys.readouterr().out.splitlines() if " done: " in line]
    assert len(finished) == 3 - counts["done"]  # one line per job run now, with its result and what is left
    assert all(line.startswith("Synthetic ERM_hp") and "iid " in line and "%" in line for line in finished)
    assert finished[-1].endswith("; 0 jobs remaining")
    assert _check_done_exactly_once(jobs[0]).count("Command:") == 1  # the finished job never ran again
    for job in jobs[1:]:
        _check_done_exactly_once(job)
    again = sweep.run(_argv("launch", tmp_path, n_hparams=3))
    assert again["counts"]["done"] == 3 and _check_done_exactly_once(jobs[0]).count("Command:") == 1


def test_submitit_local_executor_jobs_failing_half_way_resume_on_relaunch(tmp_path, kill_subprocesses_at):
    argv = _argv("launch", tmp_path, "--launcher", "slurm", "--cluster", "local", "--gpus", "0", "--wait")
    kill_subprocesses_at("step:2")  # every job dies after the update of step 1
    first = sweep.run(argv)
    assert len(first["failed"]) == 2
    assert first["counts"] == {"done": 0, "failed": 0, "incomplete": 2, "not launched": 0}

    kill_subprocesses_at(None)
    second = sweep.run(argv)
    assert second["failed"] == []
    assert second["counts"] == {"done": 2, "failed": 0, "incomplete": 0, "not launched": 0}
    for job in second["jobs"]:
        assert "[TE0] resumed after step 0" in _check_done_exactly_once(job)
    third = sweep.run(argv)
    assert third["counts"]["done"] == 2
    submitted = [path for path in (tmp_path / "submitit").iterdir() if path.name.isdigit()]
    assert len(submitted) == 4  # the third launch submitted nothing


def test_pair_folds_and_domainbeds_flags(tmp_path, capsys):
    plain = sweep.run(_argv("launch", tmp_path, "--dry_run"))["jobs"]
    assert "--pair_folds" not in capsys.readouterr().out
    single = sweep.run(_argv("launch", tmp_path, "--dry_run", "--single_test_envs", "--command_launcher", "local",
                             "--skip_confirmation"))["jobs"]
    capsys.readouterr()
    # the option adds no key to a job's arguments unless set: sweeps launched before it keep their jobs
    assert [job.directory for job in single] == [job.directory for job in plain]
    assert "pair_folds" not in plain[0].train_args
    pairs = sweep.run(_argv("launch", tmp_path, "--dry_run", "--pair_folds"))["jobs"]
    assert capsys.readouterr().out.count("--pair_folds --batch_size") == 2
    assert {job.directory for job in pairs}.isdisjoint(job.directory for job in plain)
    with pytest.raises(SystemExit):
        sweep.run(_argv("launch", tmp_path, "--dry_run", "--pair_folds", "--single_test_envs"))
    assert "not allowed with argument" in capsys.readouterr().err
