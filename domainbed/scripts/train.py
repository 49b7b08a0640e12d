"""DomainBed's train.py as a drop-in: one run of one algorithm, the given test environments held out.

    python -m domainbed.scripts.train --data_dir DATA --dataset PACS --algorithm ERM --test_envs 0 \
        --output_dir OUT [--hparams '{"lr": 1e-4}'] [--hparams_seed N --trial_seed T --seed S] \
        [--steps N --checkpoint_freq K] [--task domain_adaptation --uda_holdout_fraction F]

Every flag of DomainBed's train.py, with its default. Several `--test_envs` are held out together,
in one run (DomainBed's sweep trains such pairs for leave-one-domain-out selection). OUT holds what
DomainBed writes there: `results.jsonl`, one line at step 0, every `checkpoint_freq` steps and at
the last step, with DomainBed's keys (`step`, `epoch`, the update's statistics such as `loss`,
`step_time`, `env{i}_in_acc`, `env{i}_out_acc`, `env{i}_uda_acc` when there is a uda split,
`mem_gb`, and `hparams` and `args` on every line), `out.txt` (the log) and `done` at the end.
The training is the project's trainer (domainbed/training/trainer.py, one fold whose test
environments are `--test_envs`), not a loop of its own.

What differs from DomainBed's, and why:
- `model.pkl` is `model.pth` (and `model_step{N}.pth`), the project's checksummed weights-only
  format, which loading cannot turn into running code (unpickling can):
  `domainbed.runs.model_io.load_model("OUT/model.pth")` rebuilds the algorithm.
- The hparams are the registry's defaults (or `--hparams_seed`'s DomainBed draw) with the run
  settings' defaults, not config.yaml's: DomainBed has no weight averaging, so `swad` is False
  (`--hparams '{"swad": "LossValley"}'` turns it on). Every `--hparams` key must be declared: a
  misspelt one is a one-line error, where DomainBed would ignore it.
- `--task domain_adaptation` carves DomainBed's uda split of each test environment (the same
  items), evaluates it as `env{i}_uda_acc` and refuses a split left empty, as DomainBed does; the
  unlabeled minibatches DomainBed hands to `update(minibatches, unlabeled)` are not drawn, since
  none of DomainBed's algorithms reads them and `Algorithm.update` here takes labelled minibatches
  only. A method whose `update` has an `unlabeled` parameter is refused under that task rather
  than trained without its data.
- The run's random numbers are seeded by (`--seed`, `--trial_seed`, test environments), as
  train_all.py's folds are (DomainBed: `--seed` alone); the holdout splits are DomainBed's, seeded
  by `--trial_seed`.
- Errors are one line on stderr (no err.txt), checked before OUT is written to; an OUT that
  already holds results.jsonl or done is refused (DomainBed would append a second run to it).
"""

import argparse
import inspect
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from domainbed import distributed, hparams_registry
from domainbed.algorithms import ALGORITHMS, get_algorithm_class
from domainbed.datasets import DATASETS, get_dataset_class
from domainbed.errors import UsageError
from domainbed.hparams.checks import check_run_settings
from domainbed.hparams.config import build_hparams
from domainbed.hparams.rules import fraction
from domainbed.runs import model_io, run_files
from domainbed.training.experiment import error_line, log_settings
from domainbed.training.fold_splits import make_splits
from domainbed.training.log import RunLog
from domainbed.training.trainer import FoldSettings, train_fold

TASKS = ("domain_generalization", "domain_adaptation")
# DomainBed has no weight averaging; the rest of config.yaml only repeats the run settings' defaults
DOMAINBED_RUN_SETTINGS = {"swad": False}
RESULTS, DONE, LOG, MODEL = "results.jsonl", "done", "out.txt", "model.pth"
# the trainer's evaluation entries that DomainBed's records lack (its accuracies become `{split}_acc`)
_EVALUATION_KEY = re.compile(r"env\d+_(in|out|uda)(_loss)?|(train|test)_(in|out|uda)|tr_outloss|eval_time|test_envs")

EXAMPLE = """examples:
  python -m domainbed.scripts.train --data_dir DATA --dataset PACS --algorithm ERM --test_envs 0 --output_dir out
  python -m domainbed.scripts.train --dataset Debug28 --algorithm IRM --test_envs 0 1 --steps 5 \\
      --hparams '{"lr": 1e-4}' --output_dir out

model.pkl is model.pth here, in the project's safe (weights-only, checksummed) format; load it with
domainbed.runs.model_io.load_model. Leave-one-domain-out over every fold with SWAD's protocol:
python train_all.py (docs/coming_from_domainbed.md).
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Domain generalization: one run, as DomainBed's train.py",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=str, help="folder holding the datasets (not needed for Debug28, "
                                                     "Debug224 and Synthetic)")
    parser.add_argument("--dataset", type=str, default="RotatedMNIST", help=f"one of {', '.join(sorted(DATASETS))}")
    parser.add_argument("--algorithm", type=str, default="ERM",
                        help=f"one of {', '.join(sorted(ALGORITHMS))}, or an outside method as package.module:Class")
    parser.add_argument("--task", type=str, default="domain_generalization", choices=TASKS)
    parser.add_argument("--hparams", type=str, help="JSON-serialized hparams dict, applied last")
    parser.add_argument("--hparams_seed", type=int, default=0,
                        help='seed for random hparams (0 means "default hparams")')
    parser.add_argument("--trial_seed", type=int, default=0,
                        help="trial number (used for seeding split_dataset and random_hparams)")
    parser.add_argument("--seed", type=int, default=0, help="seed for everything else")
    parser.add_argument("--steps", type=int, default=None, help="number of steps (default: the dataset's)")
    parser.add_argument("--checkpoint_freq", type=int, default=None,
                        help="evaluate and write a record every N steps (default: the dataset's)")
    parser.add_argument("--test_envs", "--test_env", type=int, nargs="+", default=[0],
                        help="the environments held out, together (default: 0)")
    parser.add_argument("--output_dir", type=str, default="train_output")
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--uda_holdout_fraction", type=float, default=0,
                        help="for domain adaptation, the fraction of each test environment's in-split set apart "
                             "as its uda split")
    parser.add_argument("--skip_model_save", action="store_true", help="write no model.pth")
    parser.add_argument("--save_model_every_checkpoint", action="store_true",
                        help="also write model_step{N}.pth at every checkpoint")
    return parser


def hparams_overrides(text: str | None) -> list:
    """[(key, value)] of `--hparams`' JSON object."""
    if text is None:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--hparams {text!r} is not valid JSON ({error}); give an object like "
                         "'{\"lr\": 1e-4}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"--hparams {text!r} is not a JSON object; give one like '{{\"lr\": 1e-4}}'")
    return list(value.items())


def domainbed_hparams(args) -> dict:
    """The registry's defaults or DomainBed's draw, the run settings' defaults with DomainBed's own
    (no averaging), the algorithm's own run settings, then `--hparams`."""
    drawn = hparams_registry.search_hparams(args.algorithm, args.dataset, args.hparams_seed, args.trial_seed)
    defaults = {**drawn, **hparams_registry.run_setting_defaults(args.algorithm, args.dataset),
                **DOMAINBED_RUN_SETTINGS}
    return build_hparams(defaults, None, (), hparams_overrides(args.hparams),
                         hparams_registry.own_run_settings(args.algorithm, args.dataset),
                         f"{args.algorithm}.own_run_settings")


def check_test_envs(test_envs, dataset, dataset_name: str) -> None:
    """What check_run_settings cannot know before the data is read: the environments of a dataset
    that finds them on disk (ImageFolder), and that one is left to train on."""
    names = ", ".join(f"{i}={name}" for i, name in enumerate(dataset.environments))
    for env in test_envs:
        if env >= len(dataset):
            raise UsageError(f"--test_envs {env} is out of range; valid for {dataset_name}: {names}")
    if len(test_envs) >= len(dataset):
        raise UsageError(f"--test_envs {' '.join(map(str, test_envs))} leaves no training environment; "
                         f"{dataset_name} has {len(dataset)} ({names})")


def check_domain_adaptation(args, dataset, hparams) -> None:
    """DomainBed's refusal of an empty uda split, and ours of a method that wants unlabeled data."""
    if args.task != "domain_adaptation":
        return
    _, eval_splits = make_splits(dataset, args.test_envs, args.holdout_fraction, args.trial_seed,
                                 examples_per_domain=hparams["examples_per_domain"],
                                 uda_holdout_fraction=args.uda_holdout_fraction)
    if not any(split.inout == "uda" and len(split.dataset) for split in eval_splits):
        raise UsageError(f"--task domain_adaptation needs unlabeled test-environment samples, and "
                         f"--uda_holdout_fraction {args.uda_holdout_fraction} leaves none; give e.g. 0.2")
    if "unlabeled" in inspect.signature(get_algorithm_class(args.algorithm).update).parameters:
        raise UsageError(f"{args.algorithm}.update takes unlabeled data, which this trainer does not pass "
                         "(Algorithm.update takes labelled minibatches only); use --task domain_generalization")


def check(args) -> tuple:
    """(dataset, hparams, n_steps, checkpoint_freq), once every flag has been checked."""
    get_algorithm_class(args.algorithm)
    if distributed.launched_world_size() > 1:
        raise UsageError(f"DomainBed's train.py trains in one process, and torchrun started "
                         f"{distributed.launched_world_size()}; for data parallelism run train_all.py under torchrun "
                         "(docs/data_parallel.md)")
    dataset_class = get_dataset_class(args.dataset)
    hparams = domainbed_hparams(args)
    check_run_settings(SimpleNamespace(algorithm=args.algorithm, dataset=args.dataset, device="auto",
                                       steps=args.steps, checkpoint_freq=args.checkpoint_freq,
                                       holdout_fraction=args.holdout_fraction, test_envs=args.test_envs), hparams)
    if not fraction().accepts(args.uda_holdout_fraction):
        raise UsageError(f"--uda_holdout_fraction {args.uda_holdout_fraction!r} is out of range; valid: "
                         f"{fraction().valid}")
    if args.data_dir is None and not dataset_class.GENERATED:
        raise UsageError(f"--data_dir is needed for {args.dataset}: the folder holding its files "
                         "(python -m domainbed.scripts.download fetches them)")
    output = Path(args.output_dir)
    for name in (RESULTS, DONE):
        if (output / name).exists():
            raise UsageError(f"--output_dir {output} already holds a run ({name}); remove it or choose another "
                             "--output_dir")
    dataset = dataset_class(args.data_dir or "", [], hparams)
    check_test_envs(args.test_envs, dataset, args.dataset)
    check_domain_adaptation(args, dataset, hparams)
    return dataset, hparams, args.steps or dataset.N_STEPS, args.checkpoint_freq or dataset.CHECKPOINT_FREQ


def domainbed_record(record: dict, fold, args: dict, hparams: dict) -> dict:
    """A trainer record as DomainBed's train.py writes it to results.jsonl."""
    in_splits = [split for split in fold.evaluator.splits if split.inout == "in"]
    # DomainBed's epoch: over the smallest in-split of every environment, test environments included
    steps_per_epoch = min(len(split.dataset) / hparams["batch_size"] for split in in_splits)
    result = {"step": record["step"], "epoch": record["step"] / steps_per_epoch}
    result.update({key: value for key, value in record.items()
                   if key not in result and not _EVALUATION_KEY.fullmatch(key)})
    result.update({f"{split.name}_acc": record[split.name] for split in fold.evaluator.splits if split.name in record})
    device = fold.device
    result["mem_gb"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3 if device.type == "cuda" else 0.0
    result.update({"hparams": hparams, "args": args})
    return result


class DomainBedOutput:
    """The trainer's `on_record` hook: each record as a line of OUT/results.jsonl and, with
    `--save_model_every_checkpoint`, the model of that step; keeps the fold for the final model."""

    def __init__(self, args, hparams: dict, meta: dict):
        self.out_dir = Path(args.output_dir)
        self.args = vars(args)
        self.hparams = hparams
        self.meta = meta
        self.save_every_checkpoint = args.save_model_every_checkpoint and not args.skip_model_save
        self.fold = None

    def __call__(self, fold, record: dict) -> None:
        self.fold = fold
        run_files.append_record(self.out_dir / RESULTS, domainbed_record(record, fold, self.args, self.hparams))
        if self.save_every_checkpoint:
            self.save(self.out_dir / f"model_step{record['step']}.pth", fold.algorithm)

    def save(self, path: Path, model) -> None:
        model_io.save_model(path, model, {**self.meta, "transforms": dict(self.fold.model_transforms)})


def run(argv) -> dict:
    """Train as DomainBed's train.py with the command line `argv` (without the program name);
    returns the trainer's selection rows."""
    args = make_parser().parse_args(argv)
    dataset, hparams, n_steps, checkpoint_freq = check(args)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(out_dir / LOG)
    try:
        log_settings(log, "", args, hparams)
        # DomainBed's cuDNN settings, for every run
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        test_envs = list(args.test_envs)
        meta = model_io.model_meta(args.algorithm, dataset, len(dataset) - len(test_envs), hparams, test_envs)
        output = DomainBedOutput(args, hparams, meta)
        settings = FoldSettings(algorithm=args.algorithm, test_envs=test_envs, n_steps=n_steps,
                                checkpoint_freq=checkpoint_freq, seed=args.seed, trial_seed=args.trial_seed,
                                holdout_fraction=args.holdout_fraction, evalmode="all", device="auto", tb_freq=0,
                                uda_holdout_fraction=args.uda_holdout_fraction)
        rows, _, _, final_model = train_fold(dataset, settings, hparams, log, on_record=output)
        if not args.skip_model_save:
            output.save(out_dir / MODEL, final_model)
        (out_dir / DONE).write_text("done")
        return rows
    finally:
        log.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(argv)
    except UsageError as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: --output_dir keeps the records so far; like DomainBed's, this script does not resume "
              "(a new run needs an --output_dir without results.jsonl and done)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
