"""Resumable folds: everything a fold needs to continue, saved atomically at every checkpoint.

After the evaluation at step N the trainer writes `OUT/resume/TE{envs}_step{N}.pth` (a temporary
file, fsynced, then renamed, so a crash leaves the old checkpoint or the new one, never half of
one) holding:

- the algorithm's state dict (which carries any `get_extra_state()` of its modules: counters,
  schedules) and, under the keys `meta` / `model_dict`, what `model_io.load_model` reads, so a
  kept checkpoint is also a loadable model;
- every optimizer of `algorithm.optimizers()`, with the names of the parameters in each of its
  groups, so that groups grown during training (quantization's step sizes) are rebuilt;
- `fold.model_transforms` (module-tree changes, replayed with model_io's REBUILDERS before the
  state dict is loaded), each extension's `state_dict()`, in the extensions' order, and the
  trainer's own stateful objects (the fp16 loss scaler);
- the RNG states of python, numpy and torch (CPU, and the run's CUDA device, which a resume
  restores on its own device whatever the GPU count of its machine), the records so far, and
  whether an extension stopped training.

The data stream needs no state: the batches of step t (and their augmentation) are a pure function
of (stream seed, t), see domainbed/data/sampling.py, so the resumed loaders start at step N + 1.
The two newest checkpoints of a fold are kept (a damaged newest one falls back to the other), plus, with `keep_best`, the one of best
training-domain validation accuracy. A finished fold leaves `OUT/resume/TE{envs}_done.json` with
its selection rows (a resumed run skips it) and deletes its checkpoints but the best.
"""

import json
import random
from pathlib import Path

import numpy as np
import torch

from domainbed import misc
from domainbed.errors import UsageError
from domainbed.results.selection import best_training_domain_validation
from domainbed.runs import layout, model_io, persistence, run_files
from domainbed.runs.layout import checkpoint_path, done_path, resume_dir

FORMAT = 2  # 2: checksummed, weights_only-loadable (domainbed/runs/persistence.py)
# the newest checkpoints kept per fold, so that a damaged newest one leaves one to fall back to
KEEP_LAST = 2
# Hparams that change speed, never results: a run may resume with other values.
RESUMABLE_HPARAMS = {"num_workers", "progress_interval"}


def list_checkpoints(out_dir, test_envs) -> dict:
    """{step: path} of the fold's checkpoints on disk."""
    pattern = layout.checkpoint_pattern(test_envs)
    folder = resume_dir(out_dir)
    paths = folder.iterdir() if folder.is_dir() else []
    return {int(match[1]): path for path in paths if (match := pattern.fullmatch(path.name))}


def fingerprint(settings, hparams: dict) -> dict:
    """What must not change between a run and its resumption."""
    return json.loads(misc.to_json({
        "algorithm": settings.algorithm, "test_envs": list(settings.test_envs), "n_steps": settings.n_steps,
        "checkpoint_freq": settings.checkpoint_freq, "seed": settings.seed, "trial_seed": settings.trial_seed,
        "holdout_fraction": settings.holdout_fraction, "evalmode": settings.evalmode,
        "hparams": {key: value for key, value in hparams.items() if key not in RESUMABLE_HPARAMS},
    }))


def _rng_state(device) -> dict:
    """The RNG states; on CUDA also the run device's own generator under `cuda_device`, which a
    resume restores on whatever device (and machine, with whatever GPU count) it runs."""
    # numpy's state as a tensor, so the checkpoint loads with weights_only (domainbed/runs/persistence.py)
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(), "device": str(device)}
    if torch.device(device).type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device, log=print, where: str = "") -> None:
    """Restore the RNG states. A run on CUDA whose device's state the checkpoint lacks (written on
    the CPU, or by a version that saved every GPU's state, `cuda`, on a machine with another GPU
    count) says in one line which random draws will differ."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if torch.device(device).type != "cuda":
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    else:
        written = (f"on a machine with {len(state['cuda'])} GPUs (this one has {torch.cuda.device_count()})"
                   if "cuda" in state else f"by a run on {state.get('device', 'the CPU')}")
        log(f"{where}warning: the checkpoint holds no random state for {device} (written {written}): random draws "
            "on the GPU (dropout, DMG's mask samples, RSC's random scores, ...) will differ from those of an "
            "uninterrupted run")


def _optimizer_state(optimizer, names: dict) -> dict:
    return {
        "state_dict": optimizer.state_dict(),
        "param_names": [[names.get(id(p)) for p in group["params"]] for group in optimizer.param_groups],
    }


def _load_optimizer(name, optimizer, saved: dict, parameters: dict) -> None:
    groups = saved["param_names"]
    if len(groups) != len(optimizer.param_groups):
        raise UsageError(f"optimizer {name!r} has {len(optimizer.param_groups)} parameter groups but the "
                         f"checkpoint has {len(groups)}")
    for group, param_names in zip(optimizer.param_groups, groups):
        if None in param_names:
            continue  # a parameter outside the algorithm's modules: trust the optimizer's own group
        missing = [n for n in param_names if n not in parameters]
        if missing:
            raise UsageError(f"optimizer {name!r} in the checkpoint holds {', '.join(missing)}, which the "
                             f"rebuilt model lacks")
        group["params"] = [parameters[n] for n in param_names]
    optimizer.load_state_dict(saved["state_dict"])


def save(state: dict, path: Path) -> None:
    """Write `state` to `path` atomically, durably and with its checksum (domainbed/runs/persistence.py)."""
    persistence.save(state, path)


def _load_latest(out_dir, test_envs, log=print) -> dict | None:
    """The fold's newest intact checkpoint (with its path under `path`), or None. A damaged one
    (failing its checksum, unreadable) is set aside as `.damaged` and the next older one is tried."""
    found = list_checkpoints(out_dir, test_envs)
    for step in sorted(found, reverse=True):
        path = found[step]
        try:
            return {**persistence.load(path, "checkpoint"), "path": path}
        except persistence.DamagedFile as error:
            path.rename(path.with_name(path.name + ".damaged"))
            older = [s for s in found if s < step]
            log(f"warning: {error}; " + (f"falling back to the checkpoint of step {max(older)}" if older
                                          else "no older checkpoint: the fold starts from step 0"))
    return None


def best_step(records) -> int | None:
    """The step of best training-domain validation accuracy, the earliest on ties (as selection's iid)."""
    if not records or "train_out" not in records[0]:
        return None
    return best_training_domain_validation(records)["step"]


def prune(out_dir, test_envs, records, keep_best: bool, keep_last: bool = True) -> None:
    """Delete the fold's checkpoints but the newest (with `keep_last`) and the best (with `keep_best`)."""
    found = list_checkpoints(out_dir, test_envs)
    keep = set()
    if keep_last and found:
        keep.update(sorted(found)[-KEEP_LAST:])
    if keep_best:
        keep.add(best_step(records))
    for step, path in found.items():
        if step not in keep:
            path.unlink(missing_ok=True)


def mark_finished(out_dir, test_envs, rows: dict, row_rules: dict) -> None:
    misc.atomic_write_text(done_path(out_dir, test_envs), misc.to_json(
        {"test_envs": list(test_envs), "rows": rows, "row_rules": row_rules}, indent=2))


def finished(out_dir, test_envs) -> dict | None:
    """{"rows", "row_rules"} of a fold that finished in `out_dir`, or None."""
    path = done_path(out_dir, test_envs)
    return json.loads(path.read_text()) if path.is_file() else None


def rewrite_fold_records(records_path: Path, test_envs, records) -> None:
    """results.jsonl with this fold's lines replaced by `records`: a crash after a record was
    appended but before its checkpoint was written must not leave that record twice."""
    lines = records_path.read_text().splitlines() if records_path.exists() else []
    kept = [line + "\n" for line in lines if line.strip() and json.loads(line)["test_envs"] != list(test_envs)]
    misc.atomic_write_text(records_path, "".join(kept + [run_files.record_line(record) for record in records]))


def remove_temporaries(out_dir) -> list:
    """Delete the temporary files that atomic writes leave behind when killed; returns them."""
    stale = [path for path in Path(out_dir).rglob(".*.tmp") if path.is_file()]
    for path in stale:
        path.unlink()
    return stale


class FoldCheckpoints:
    """The resume checkpoints of one fold; does nothing when the fold has no output directory.

    `meta` is what model_io needs to rebuild the algorithm; `stateful` names further objects of
    the trainer with state_dict()/load_state_dict() (the fp16 loss scaler)."""

    def __init__(self, settings, hparams: dict, meta: dict, stateful: dict):
        self.out_dir = settings.out_dir
        self.test_envs = list(settings.test_envs)
        self.keep_best = settings.keep_best
        self.fingerprint = fingerprint(settings, hparams)
        self.meta = meta
        self.stateful = stateful

    def load_latest(self, log=print) -> dict | None:
        return None if self.out_dir is None else _load_latest(self.out_dir, self.test_envs, log)

    def save(self, fold, extensions, step: int) -> None:
        """Checkpoint the fold after the evaluation at `step`, then drop the older checkpoints."""
        if self.out_dir is None:
            return
        algorithm = fold.algorithm
        names = {id(p): name for name, p in algorithm.named_parameters()}
        state = {
            "format": FORMAT,
            "step": step,
            "fingerprint": self.fingerprint,
            "meta": {**self.meta, "transforms": dict(fold.model_transforms)},
            "model_dict": algorithm.state_dict(),
            "optimizers": {name: _optimizer_state(opt, names) for name, opt in algorithm.optimizers().items()},
            "extensions": [{"type": type(e).__qualname__, "state": e.state_dict()} for e in extensions],
            "trainer": {name: obj.state_dict() for name, obj in self.stateful.items()},
            "records": list(fold.records),
            "stop": fold.stop,
            "rng": _rng_state(fold.device),
        }
        save(state, checkpoint_path(self.out_dir, self.test_envs, step))
        prune(self.out_dir, self.test_envs, fold.records, self.keep_best)

    def restore(self, fold, extensions, state: dict) -> None:
        """Put a freshly built fold (algorithm constructed, extensions set up) in the saved state."""
        if state.get("format") != FORMAT:
            raise UsageError(f"checkpoint {state['path']} has format {state.get('format')}; "
                             f"this version reads {FORMAT}")
        changed = sorted(k for k in self.fingerprint if self.fingerprint[k] != state["fingerprint"].get(k))
        if changed:
            raise UsageError(f"checkpoint {state['path']} was written with other settings ({', '.join(changed)}); "
                             f"resume with the run's own command line")
        kinds = [type(e).__qualname__ for e in extensions]
        saved_kinds = [entry["type"] for entry in state["extensions"]]
        if kinds != saved_kinds:
            raise UsageError(f"checkpoint {state['path']} was written with extensions {saved_kinds}, "
                             f"this run has {kinds}")
        initial, saved_initial = self.meta.get("initial_weights"), state["meta"].get("initial_weights")
        if initial and saved_initial and initial != saved_initial:
            raise UsageError(f"checkpoint {state['path']} continues a fold that started from other weights than "
                             "this run starts from (was its --init_path model replaced?); resume with the run's own")

        algorithm = fold.algorithm
        # transforms an extension's setup already applied, as in the original run, are not replayed
        model_io.apply_transforms(algorithm, state["meta"]["transforms"], f"checkpoint {state['path']}",
                                  applied=fold.model_transforms)
        algorithm.to(fold.device)
        fold.model_transforms = dict(state["meta"]["transforms"])
        algorithm.load_state_dict(state["model_dict"])

        optimizers = algorithm.optimizers()
        if set(optimizers) != set(state["optimizers"]):
            raise UsageError(f"checkpoint {state['path']} has optimizers {sorted(state['optimizers'])}, "
                             f"the algorithm has {sorted(optimizers)}")
        parameters = dict(algorithm.named_parameters())
        for name, optimizer in optimizers.items():
            _load_optimizer(name, optimizer, state["optimizers"][name], parameters)
        for extension, entry in zip(extensions, state["extensions"]):
            extension.load_state_dict(entry["state"])
        for name, obj in self.stateful.items():
            obj.load_state_dict(state["trainer"].get(name, {}))
        fold.records = list(state["records"])
        fold.stop = state["stop"]
        _set_rng_state(state["rng"], fold.device, fold.log, f"[{fold.name}] ")

    def finish(self, rows: dict, row_rules: dict, records) -> None:
        """Mark the fold finished and delete its checkpoints (but the best with `keep_best`)."""
        if self.out_dir is None:
            return
        mark_finished(self.out_dir, self.test_envs, rows, row_rules)
        prune(self.out_dir, self.test_envs, records, self.keep_best, keep_last=False)
