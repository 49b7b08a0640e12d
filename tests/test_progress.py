"""Runs whose output goes to a file: progress lines in log.txt at a fixed interval, a line before a
long evaluation, and SIGTERM (Slurm's preemption and time limit) stopping a run as Ctrl-C does."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed.training.progress import Progress, format_duration
from domainbed.training.termination import Terminated, sigterm_as_interrupt

REPO = Path(__file__).resolve().parents[1]
ARGS = ["term", "--dataset", "Synthetic", "--steps", "6", "--checkpoint_freq", "3", "--batch_size", "8",
        "--test_envs", "0", "1", "--num_workers", "0", "--swad", "False", "--tb_freq", "0"]
# train_all.py, with the process sending itself SIGTERM after its second update (a real signal,
# delivered at a known step: the first checkpoint, of step 0, is on disk by then)
BOOT = ("import os, signal, sys, kill_points; "
        "kill_points.install('step:2', action=lambda: os.kill(os.getpid(), signal.SIGTERM)); "
        "import train_all; sys.exit(train_all.main(sys.argv[1:]))")


def _train_all(boot: str, output_dir: Path, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.run([sys.executable, "-c", boot, *ARGS, "--output_dir", str(output_dir), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_sigterm_stops_like_ctrl_c_with_the_resume_line_and_resume_finishes(tmp_path):
    stopped = _train_all(BOOT, tmp_path)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "interrupted by SIGTERM" in stopped.stderr and "--resume" in stopped.stderr
    (run_dir,) = (tmp_path / "Synthetic").iterdir()
    log = (run_dir / "log.txt").read_text()
    assert f"interrupted by SIGTERM: {run_dir}" in log and f"--resume {run_dir}" in log
    assert "Traceback" not in stopped.stderr

    resume = stopped.stderr.strip().splitlines()[-1].split()
    assert resume[:2] == ["python", "train_all.py"] and resume[-2:] == ["--resume", str(run_dir)]
    plain_boot = "import sys, train_all; sys.exit(train_all.main(sys.argv[1:]))"
    resumed = _train_all(plain_boot, tmp_path, "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "table.json").exists()
    assert "[TE0] resumed after step 0" in (run_dir / "log.txt").read_text()


def test_sigterm_handler_is_installed_only_over_the_default_and_restored():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with sigterm_as_interrupt():
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def managers_handler(signum, frame):  # submitit's, say: it requeues the job
        pass

    signal.signal(signal.SIGTERM, managers_handler)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is managers_handler
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_progress_lines_reach_log_txt(run_train_all, tmp_path):
    result = run_train_all("progress", "--dataset", "Synthetic", "--steps", "4", "--checkpoint_freq", "2",
                           "--test_envs", "0", "1", "--num_workers", "0", "--swad", "False",
                           "--progress_interval", "1e-9")
    log = (result["out_dir"] / "log.txt").read_text()
    assert "[TE0] progress: step 1/5 (20%)" in log
    # the run's ETA of the first fold counts the second fold's steps; the last line is the fold's end
    assert "[TE1] progress: step 5/5 (100%)" in log and "fold ETA 0s, run ETA 0s" in log
    assert "steps/s" in log and "evaluation" in log and "checkpoints)" in log


def test_progress_rates_etas_and_the_line_before_a_long_evaluation():
    lines, now = [], [0.0]
    progress = Progress(lines.append, "TE0", start_step=100, n_steps=1101, later_steps=1101, interval=60,
                        clock=lambda: now[0])
    now[0] = 30
    progress.after_step(159)
    assert lines == []  # within the interval
    now[0] = 100
    progress.after_step(199)  # 100 steps in 100 s
    assert lines == ["[TE0] progress: step 200/1101 (18%), 1 steps/s, fold ETA 15m01s, run ETA 33m22s, "
                     "evaluation 0s (0 checkpoints)"]
    progress.before_evaluation(200)
    progress.after_evaluation(75)
    progress.before_evaluation(300)
    assert lines[-1] == "[TE0] evaluating step 300 (the last evaluation took 1m15s)"
    assert format_duration(3725) == "1h02m"


def test_progress_interval_zero_prints_nothing():
    lines = []
    progress = Progress(lines.append, "TE0", 0, 11, 0, interval=0, clock=lambda: 1e6)
    progress.after_step(5)
    progress.after_evaluation(1e5)
    progress.before_evaluation(10)
    assert lines == []
