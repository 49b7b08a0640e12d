"""A saved run's dataset and a fold's evaluation splits, rebuilt as its trainer built them, for
the tools that evaluate final models again (ensemble, flatness)."""

from domainbed.datasets import get_dataset_class
from domainbed.training.fold_splits import make_splits


def build_dataset(run, data_dir=None):
    """The run's dataset, from `data_dir` when the data has moved since it was trained."""
    return get_dataset_class(run.args["dataset"])(data_dir or run.args["data_dir"], [], run.hparams)


def eval_splits(run, dataset, test_env: int) -> list:
    """The evaluation splits of `run`'s fold `test_env`, exactly as its trainer made them."""
    args = run.args
    return make_splits(dataset, [test_env], args["holdout_fraction"], args["trial_seed"],
                       args.get("split", "random"), args.get("split_dir"),
                       run.hparams.get("examples_per_domain", 0))[1]
