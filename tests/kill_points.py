"""Fault injection for resume tests: stop a training process at a named point, from the outside.

Nothing in the production path knows about it: `install(spec)` wraps functions of the trainer,
the evaluator and the checkpoint module so that the n-th pass through a point ends the process
with SIGKILL, or runs another `action`. Subprocesses install it from the environment
(`install_from_environment`, reading DOMAINBED_TEST_KILL_AT): `python train_all.py` and sweep jobs
through tests/faults/sitecustomize.py once a test arms the `kill_subprocesses_at` fixture of
conftest.py, test_resume.py's own boot line directly. In-process tests call
`install(spec, action, monkeypatch.setattr)` with an action that raises (test_exact_resume.py).
A point counts its passes from the start of its process.

    step        after an update (the trainer's `train_step`: the update and its extension hooks)
    eval        after an evaluation pass, before its record is written
    record      after a record was appended to results.jsonl, before its checkpoint
    checkpoint  a checkpoint written into its temporary file, not yet renamed into place
    finish      a fold's final model saved, its finished-marker not yet written
"""

import functools
import os
import signal
import types

KILL_ENV = "DOMAINBED_TEST_KILL_AT"
POINTS = ("step", "eval", "record", "checkpoint", "finish")


def sigkill():
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str, action=sigkill, setattr=setattr) -> None:
    """`spec` is `point:n`; `action()` runs at the n-th pass. `setattr` may be a monkeypatch's."""
    from domainbed.runs import checkpoint, model_io
    from domainbed.training import evaluator, trainer

    point, _, nth = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"unknown kill point {point!r}; valid: {', '.join(POINTS)}")
    passes = [0]

    def after(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            passes[0] += 1
            if passes[0] == int(nth or 1):
                action()
            return result
        return wrapper

    if point == "step":
        setattr(trainer, "train_step", after(trainer.train_step))
    elif point == "eval":
        setattr(evaluator.Evaluator, "evaluate", after(evaluator.Evaluator.evaluate))
    elif point == "record":
        setattr(trainer, "append_record", after(trainer.append_record))
    elif point == "finish":
        setattr(trainer.model_io, "save_model", after(model_io.save_model))
    else:  # checkpoints only: persistence's torch.save, which writes into the atomic temporary file
        persistence = checkpoint.persistence
        torch = persistence.torch
        stopping_torch = types.ModuleType("torch")
        stopping_torch.__getattr__ = lambda name: getattr(torch, name)
        stopping_torch.save = after(torch.save)

        def save_checkpoint(obj, path):
            persistence.torch = stopping_torch
            try:
                persistence.save(obj, path)
            finally:
                persistence.torch = torch

        proxy = types.ModuleType("persistence")
        proxy.__getattr__ = lambda name: getattr(persistence, name)
        proxy.save = save_checkpoint
        setattr(checkpoint, "persistence", proxy)


def install_from_environment() -> None:
    spec = os.environ.get(KILL_ENV)
    if spec:
        install(spec)
