"""Progress as log lines, for runs whose output goes to a file (nohup, Slurm), where tqdm's bar
is not drawn: every `progress_interval` seconds of wall-clock time one line with the steps done,
steps per second, the ETA of the fold and of the run and the time spent evaluating; and a line
before a checkpoint's evaluation when the previous one took longer than the interval, so that a
long evaluation is never silent. The lines go through the run's log, so they also land in log.txt
and, in a terminal, print above the bar.
"""

import time

from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import nonnegative_float


def format_duration(seconds: float) -> str:
    """`1h02m`, `4m05s`, `37s`: short enough for a log line, exact enough for an ETA."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


class Progress:
    """The progress lines of one fold that trains steps `start_step` .. `n_steps - 1`, followed by
    `later_steps` steps of the run's other folds (for the run's ETA). `interval` 0: no lines."""

    def __init__(self, log, fold_name: str, start_step: int, n_steps: int, later_steps: int, interval: float,
                 clock=time.monotonic):
        self.log = log
        self.fold_name = fold_name
        self.start_step = start_step
        self.n_steps = n_steps
        self.later_steps = later_steps
        self.interval = interval
        self.clock = clock
        self.started = self.last_line = clock()
        self.eval_seconds = 0.0
        self.n_evaluations = 0
        self.last_eval_seconds = 0.0

    def after_step(self, step: int) -> None:
        if self.interval and self.clock() - self.last_line >= self.interval:
            self.report(step + 1)

    def before_evaluation(self, step: int) -> None:
        if self.interval and self.last_eval_seconds > self.interval:
            self.log(f"[{self.fold_name}] evaluating step {step} (the last evaluation took "
                     f"{format_duration(self.last_eval_seconds)})")

    def after_evaluation(self, seconds: float) -> None:
        self.last_eval_seconds = seconds
        self.eval_seconds += seconds
        self.n_evaluations += 1

    def report(self, steps_done: int) -> None:
        now = self.clock()
        self.last_line = now
        # wall-clock rate, evaluations included, so that the ETAs include the evaluations to come
        rate = (steps_done - self.start_step) / max(now - self.started, 1e-9)
        fold_left = self.n_steps - steps_done
        fold_eta = format_duration(fold_left / rate) if rate else "unknown"
        run_eta = format_duration((fold_left + self.later_steps) / rate) if rate else "unknown"
        self.log(f"[{self.fold_name}] progress: step {steps_done}/{self.n_steps} "
                 f"({100 * steps_done / self.n_steps:.0f}%), {rate:.3g} steps/s, fold ETA {fold_eta}, "
                 f"run ETA {run_eta}, evaluation {format_duration(self.eval_seconds)} "
                 f"({self.n_evaluations} checkpoints)")


@run_settings
def _progress_settings(hparam, dataset):
    hparam("progress_interval", 60.0, valid=nonnegative_float(),
           help="seconds between progress lines in the log (steps/s, ETAs, evaluation time); 0: none")
