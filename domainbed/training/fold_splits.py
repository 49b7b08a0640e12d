"""A fold's data: every environment split into `in` and `out` parts, the training domains' `in`
parts to train on and every part to evaluate.

The same few arguments rebuild a saved run's splits exactly (domainbed/runs/run_data.py), so the
tools that evaluate final models again (ensemble, flatness) see what the trainer saw.
"""

from domainbed import misc
from domainbed.datasets import split_dataset
from domainbed.datasets.official_split import official_split
from domainbed.datasets.splits import SplitDataset
from domainbed.training.evaluator import EvalSplit


def holdout(dataset, env: int, test_envs, holdout_fraction: float, trial_seed: int, split: str = "random",
            split_dir=None):
    """(out, in) parts of environment `env`. With the random split, DomainBed's: `holdout_fraction`
    of a shuffle seeded by (trial_seed, env). With the official one (PACS), as RSC and DMG train:
    a training domain's in/out parts are its train/crossval lists; the test domain's in part is the
    whole domain (its out part, the crossval list, only serves the oracle row)."""
    environment = dataset[env]
    if split == "official":
        train, validation = official_split(environment, dataset.domain_dirs[env], split_dir)
        keys = range(len(environment)) if env in test_envs else train
        return SplitDataset(environment, validation), SplitDataset(environment, keys)
    n_out = int(len(environment) * holdout_fraction)
    return split_dataset(environment, n_out, misc.seed_hash(trial_seed, env))


def make_splits(dataset, test_envs, holdout_fraction: float, trial_seed: int, split: str = "random",
                split_dir=None):
    """(training `in` splits, evaluation splits), every environment split by `holdout`."""
    train_envs = [env for env in range(len(dataset)) if env not in test_envs]
    train_splits, eval_splits = [], []
    for env in range(len(dataset)):
        out, in_ = holdout(dataset, env, test_envs, holdout_fraction, trial_seed, split, split_dir)
        train_domain = train_envs.index(env) if env in train_envs else None
        in_.transform = dataset.train_transform if train_domain is not None else dataset.eval_transform
        out.transform = dataset.eval_transform
        if train_domain is not None:
            train_splits.append(in_)
        eval_splits.append(EvalSplit(f"env{env}_in", in_, env, "in", train_domain))
        eval_splits.append(EvalSplit(f"env{env}_out", out, env, "out", train_domain))
    return train_splits, eval_splits
