"""One leave-domains-out fold: splits, loaders, the training loop, evaluation, records.

The flow follows SWAD's trainer: every environment is split into `in` and `out` (holdout)
parts seeded by `trial_seed` (domainbed/training/fold_splits.py); the training domains' `in` parts feed the input pipeline
(domainbed/data/pipeline.py: the classic DataLoaders or the gpu pipeline, one interface); every `checkpoint_freq` steps the evaluator measures every split and one record is appended
to results.jsonl; the selection rows come from those records at the end. Run-level features
(weight averaging, quantization) hook in as `Extension`s, never as branches here.
"""

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from domainbed import distributed, misc
from domainbed.runs import checkpoint, layout, model_io
from domainbed.runs.run_files import append_record
from domainbed.results import selection
from domainbed.algorithms import get_algorithm_class
from domainbed.training.compiling import compile_featurizer
from domainbed.data.gpu_pipeline import build_pipeline
from domainbed.training.evaluator import Evaluator
from domainbed.training.extensions import build_extensions
from domainbed.training.fold_splits import make_splits
from domainbed.training.initialization import fingerprint, initialize
from domainbed.training.precision import Precision
from domainbed.training.progress import Progress
from domainbed.training.scalars import ScalarLog
from domainbed.training.step_stats import PendingStats


@dataclass
class FoldSettings:
    """What a fold needs from the command line."""

    algorithm: str
    test_envs: list
    n_steps: int
    checkpoint_freq: int
    seed: int = 0
    trial_seed: int = 0
    holdout_fraction: float = 0.2
    evalmode: str = "fast"
    device: str = "cpu"
    model_save: int | None = None
    out_dir: Path | None = None
    resume: bool = False  # continue from the fold's newest checkpoint in out_dir (domainbed/runs/checkpoint.py)
    keep_best: bool = False  # also keep the checkpoint of best training-domain validation accuracy
    tb_freq: int = 10  # TensorBoard scalars of the update every tb_freq steps (0: none at all)
    split: str = "random"  # random: DomainBed's seeded holdout; official: PACS's kfold lists in split_dir
    split_dir: str | None = None
    later_steps: int = 0  # steps of the run's folds still to train after this one, for the run's ETA
    uda_holdout_fraction: float = 0.0  # DomainBed's env{i}_uda split of each test domain (fold_splits.py)
    earlier_steps: int = 0  # steps of the run's folds trained before this one (the search's resource)


@dataclass
class Fold:
    """The state of one fold, shared with extensions."""

    settings: FoldSettings
    hparams: dict
    dataset: object
    algorithm: torch.nn.Module
    evaluator: Evaluator
    train_minibatches: object
    device: torch.device
    log: object
    records: list = field(default_factory=list)
    stop: bool = False
    final_model: torch.nn.Module | None = None
    row_rules: dict = field(default_factory=dict)
    model_transforms: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # the last `algorithm.update`'s (device tensors), for after_step hooks
    on_record: object = None  # on_record(fold, record) after every record is kept (DomainBed's train.py writes its own)

    @property
    def name(self) -> str:
        return layout.fold_tag(self.settings.test_envs)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _format_record(record: dict) -> str:
    keys = ["step", "epoch", "loss", "train_out", "test_in", "test_out", "tr_outloss", "step_time", "eval_time"]
    return " | ".join(f"{key} {record[key]:.4g}" for key in keys if key in record)


def build_algorithm(settings: FoldSettings, dataset, n_domains: int, hparams: dict, device, precision):
    algorithm = get_algorithm_class(settings.algorithm)(dataset.input_shape, dataset.num_classes, n_domains, hparams)
    initialize(algorithm, hparams, dataset, settings.test_envs)
    algorithm = algorithm.to(device)
    if device.type == "cuda":
        algorithm = algorithm.to(memory_format=torch.channels_last)
    distributed.synchronize_batchnorm(algorithm, device)
    precision.attach(algorithm)
    if hparams["compile"]:
        compile_featurizer(algorithm)
    return algorithm


def keep_record(fold: Fold, record: dict, records_path: Path | None) -> None:
    """The record in `fold.records`, its line in results.jsonl and in the log."""
    fold.records.append(record)
    if records_path is not None:
        append_record(records_path, record)
    fold.log(f"[{fold.name}] " + _format_record(record))
    if fold.on_record is not None:
        fold.on_record(fold, record)


def training_domain_validation(record: dict, test_envs) -> dict:
    """The entries of a checkpoint's record that an algorithm may learn from: the training
    domains' held-out accuracies and losses, per domain and averaged."""
    test_prefixes = tuple(f"env{env}_" for env in test_envs)
    return {key: value for key, value in record.items()
            if key in ("train_out", "tr_outloss")
            or (key.startswith("env") and key.endswith(("_out", "_out_loss")) and not key.startswith(test_prefixes))}


def evaluate_checkpoint(fold: Fold, extensions, step: int, interval: dict, steps_per_epoch: float,
                        records_path: Path | None) -> dict:
    """The record of the checkpoint at `step` (the interval's training means, every split's
    accuracy and loss, and what the extensions add), kept (`keep_record`) also when an extension
    refuses its numbers (a NaN validation loss), so that results.jsonl shows the user what stopped the run.
    Then the algorithm's `on_checkpoint` sees the training domains' part, and may end training."""
    record = {"test_envs": list(fold.settings.test_envs), "step": step, "epoch": step / steps_per_epoch}
    record.update({key: float(np.mean(values)) for key, values in interval.items()})
    interval.clear()
    eval_start = time.perf_counter()
    # every process evaluates (the same numbers); rank 0's go everywhere, so that no rounding
    # difference between devices can make the processes' schedules or early stops part ways
    accuracies, losses, summaries = distributed.broadcast(fold.evaluator.evaluate(fold.algorithm))
    record["eval_time"] = time.perf_counter() - eval_start
    record.update(summaries)
    record.update(accuracies)
    record.update({f"{name}_loss": value for name, value in losses.items()})
    try:
        for extension in extensions:
            extension.at_checkpoint(fold, step, record)
        if fold.algorithm.on_checkpoint(step, training_domain_validation(record, fold.settings.test_envs)):
            fold.stop = True
            fold.log(f"[{fold.name}] {fold.settings.algorithm} ends training at this checkpoint (its on_checkpoint)")
    finally:
        keep_record(fold, record, records_path)
    return record


def save_model_snapshot(fold: Fold, step: int, meta: dict) -> None:
    """`--model_save N`: the algorithm's weights at every checkpoint from step N on."""
    settings = fold.settings
    if settings.model_save is None or step < settings.model_save or not settings.out_dir:
        return
    model_io.save_model(layout.snapshot_path(settings.out_dir, settings.test_envs, step), fold.algorithm,
                        {**meta, "transforms": dict(fold.model_transforms), "step": step})


def select(fold: Fold, extensions) -> dict:
    """The selection rows from the records, then the extensions' rows (weight averages)."""
    rows = selection.select(fold.records)
    fold.row_rules = {row: selection.describe(row) for row in rows}
    for extension in extensions:
        extension.finish(fold, rows)
    for row, accuracy in rows.items():
        fold.log(f"[{fold.name}] {row} = {100 * accuracy:.2f}%")
    return rows


def train_step(fold: Fold, extensions, precision, step: int) -> dict:
    """One step: the next minibatches, the extensions' hooks around the update under the run's
    precision; returns the update's stats (still on the device). Nothing here waits for the
    device (tests/test_host_sync.py). Under data parallelism the update sees this process's
    share of the minibatches (domainbed/distributed.py); its stats are averaged over the
    processes when the host reads them (`train_steps`)."""
    minibatches = next(fold.train_minibatches)
    for extension in extensions:
        extension.before_step(fold, step)
    fold.algorithm.on_step_begin(step, fold.settings.n_steps)
    with precision.training_step(fold.algorithm):
        fold.stats = fold.algorithm.update(distributed.shard(minibatches))
    for extension in extensions:
        extension.after_step(fold, step)
    return fold.stats


def train_steps(fold: Fold, extensions, precision, checkpoints, scalars, start_step: int, steps_per_epoch: float,
                records_path: Path | None) -> None:
    """The training loop from `start_step`: an update per step; at every checkpoint a record, its
    line in results.jsonl, the `--model_save` snapshot and the resume checkpoint."""
    interval = collections.defaultdict(list)
    pending, step_times = PendingStats(), []  # the steps whose stats the host has not read yet
    tb_freq = fold.settings.tb_freq
    end_step = start_step if fold.stop else fold.settings.n_steps  # an extension stopped it before the crash
    bar = tqdm(total=fold.settings.n_steps, initial=start_step, desc=f"fold {fold.name}", dynamic_ncols=True,
               disable=None if distributed.is_main() else True, leave=False)
    progress = Progress(fold.log, fold.name, start_step, fold.settings.n_steps, fold.settings.later_steps,
                        fold.hparams["progress_interval"])
    for step in range(start_step, end_step):
        start = time.perf_counter()
        pending.add(step, train_step(fold, extensions, precision, step))
        at_checkpoint = step % fold.settings.checkpoint_freq == 0 or step == fold.settings.n_steps - 1
        # the one host synchronisation of a step that logs: the wait for the queued steps falls
        # into this step's time, so the interval's mean step time stays the device's
        read = pending.read(distributed.mean_over_processes) if at_checkpoint or (tb_freq and step % tb_freq == 0) else []
        step_times.append(time.perf_counter() - start)
        if read:
            for (read_step, stats), step_time in zip(read, step_times):
                for extension in extensions:
                    extension.on_stats(fold, read_step, stats)
                for key, value in stats.items():
                    interval[key].append(value)
                interval["step_time"].append(step_time)
            scalars.train(step, stats, step_time, fold.algorithm.optimizers())
            bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.4f}", refresh=False)
            step_times = []
        bar.update(1)
        progress.after_step(step)

        if at_checkpoint:
            progress.before_evaluation(step)
            record = evaluate_checkpoint(fold, extensions, step, interval, steps_per_epoch, records_path)
            progress.after_evaluation(record["eval_time"])
            save_model_snapshot(fold, step, checkpoints.meta)
            scalars.checkpoint(step, record)
            checkpoints.save(fold, extensions, step)
            if fold.stop:
                fold.log(f"[{fold.name}] stopping early at step {step}")
                break
    bar.close()
    scalars.close()


def train_fold(dataset, settings: FoldSettings, hparams: dict, log, records_path: Path | None = None,
               on_record=None):
    """Train and evaluate one fold; returns (selection rows, row rules, records, final model).
    `on_record(fold, record)`, when given, sees every record once it is kept."""
    # build
    fold_seed = misc.fold_seed(settings.seed, settings.trial_seed, settings.test_envs)
    misc.set_seed(fold_seed)
    device = resolve_device(settings.device)
    train_splits, eval_splits = make_splits(dataset, settings.test_envs, settings.holdout_fraction,
                                            settings.trial_seed, settings.split, settings.split_dir,
                                            hparams["examples_per_domain"], settings.uda_holdout_fraction)
    stream_seeds = [misc.seed_hash(fold_seed, "train", i) for i in range(len(train_splits))]
    pipeline = build_pipeline(hparams, dataset, device, eval_seed=misc.seed_hash(fold_seed, "eval"))
    precision = Precision(hparams["precision"], device)
    evaluator = Evaluator(eval_splits, settings.test_envs, hparams["test_batchsize"], 0, device,
                          settings.evalmode, make_loader=pipeline.eval_batches, autocast=precision.autocast)
    steps_per_epoch = min(len(split) / hparams["batch_size"] for split in train_splits)
    algorithm = build_algorithm(settings, dataset, len(train_splits), hparams, device, precision)
    meta = model_io.model_meta(settings.algorithm, dataset, len(train_splits), hparams, settings.test_envs,
                               initial_weights=fingerprint(algorithm))
    checkpoints = checkpoint.FoldCheckpoints(settings, hparams, meta, stateful={"precision": precision})
    # under data parallelism only rank 0 reads the run directory; the others get its checkpoint
    saved = distributed.broadcast(checkpoints.load_latest(log) if settings.resume else None)
    start_step = saved["step"] + 1 if saved else 0
    log(f"[{layout.fold_tag(settings.test_envs)}] training on {len(train_splits)} domains, {steps_per_epoch:.1f} steps per epoch, "
        f"{sum(p.numel() for p in algorithm.parameters()):,} parameters, {device}, "
        f"{pipeline.name} pipeline, {precision.name}")
    train_minibatches = pipeline.train_minibatches(train_splits, stream_seeds, hparams["batch_size"], start_step)
    fold = Fold(settings, hparams, dataset, algorithm, evaluator, train_minibatches, device, log, on_record=on_record)
    extensions = build_extensions(hparams)
    for extension in extensions:
        extension.setup(fold)
    if settings.resume and records_path is not None:
        checkpoint.rewrite_fold_records(records_path, settings.test_envs, saved["records"] if saved else [])
    tensorboard_dir = layout.tensorboard_dir(settings.out_dir, settings.test_envs) if settings.out_dir else None
    scalars = ScalarLog(tensorboard_dir, start_step, settings.tb_freq)
    if saved is not None:
        checkpoints.restore(fold, extensions, saved)  # last: it also sets the RNG states
        log(f"[{fold.name}] resumed after step {saved['step']} from {saved['path']}")

    # loop, evaluating at every checkpoint
    train_steps(fold, extensions, precision, checkpoints, scalars, start_step, steps_per_epoch, records_path)

    # select and save
    rows = select(fold, extensions)
    final_model = fold.final_model or fold.algorithm
    if settings.out_dir is not None:
        model_io.save_model(layout.final_model_path(settings.out_dir, settings.test_envs), final_model,
                            {**meta, "transforms": fold.model_transforms})
    checkpoints.finish(rows, fold.row_rules, fold.records)
    return rows, fold.row_rules, fold.records, final_model
