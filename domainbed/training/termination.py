"""SIGTERM, what Slurm sends on preemption and at the time limit, stops a run as Ctrl-C does: the
signal raises `Terminated`, a KeyboardInterrupt, in the main thread, so the run ends the way an
interrupted run ends (its checkpoints are written atomically, so whatever step it stops at, the
last one is whole) and says how to resume it.

The handler is installed only while the SIGTERM handler is the default one: a process manager that
installed its own (submitit in its job processes, to requeue them) keeps it. train_all.py started
by a sweep job is a new process, whose handler is the default again, so it stops cleanly while
the job's own handler requeues the job, which resumes with --resume.
"""

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises `Terminated`; the previous handler is restored after."""
    # Python only lets the main thread install handlers
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
