"""A saved run's dataset, a fold's evaluation splits and training minibatches, rebuilt as its
trainer built them, for the tools that evaluate final models again (ensemble, flatness, DiWA)."""

from domainbed import misc
from domainbed.data.gpu_pipeline import build_pipeline
from domainbed.datasets import get_dataset_class
from domainbed.training.fold_splits import make_splits


def build_dataset(run, data_dir=None):
    """The run's dataset, from `data_dir` when the data has moved since it was trained."""
    return get_dataset_class(run.args["dataset"])(data_dir or run.args["data_dir"], [], run.hparams)


def _splits(run, dataset, test_env: int) -> tuple:
    args = run.args
    return make_splits(dataset, [test_env], args["holdout_fraction"], args["trial_seed"],
                       args.get("split", "random"), args.get("split_dir"),
                       run.hparams.get("examples_per_domain", 0))


def eval_splits(run, dataset, test_env: int) -> list:
    """The evaluation splits of `run`'s fold `test_env`, exactly as its trainer made them."""
    return _splits(run, dataset, test_env)[1]


def train_minibatches(run, dataset, test_env: int, device):
    """An endless stream of training minibatches of `run`'s fold `test_env` (one (x, y) per training
    domain, augmented, on `device`): the fold's own from its first step; close it when done."""
    train_splits = _splits(run, dataset, test_env)[0]
    fold_seed = misc.fold_seed(run.args.get("seed", 0), run.args["trial_seed"], [test_env])
    seeds = [misc.seed_hash(fold_seed, "train", i) for i in range(len(train_splits))]
    pipeline = build_pipeline(run.hparams, dataset, device)
    return pipeline.train_minibatches(train_splits, seeds, run.hparams["batch_size"])


def whole_domain_accuracy(evaluator, accuracies: dict, test_env: int) -> float:
    """The accuracy over the whole held-out environment `test_env`, its in and out splits together
    (as EoA's and DiWA's code score it), from the per-split `accuracies` of `evaluator.evaluate`."""
    sizes = {split.name: len(split.dataset) for split in evaluator.splits}
    parts = [part for part in (f"env{test_env}_in", f"env{test_env}_out") if part in accuracies]
    return sum(accuracies[part] * sizes[part] for part in parts) / sum(sizes[part] for part in parts)
