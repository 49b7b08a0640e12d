"""A fold's data: every environment split into `in` and `out` parts, the training domains' `in`
parts to train on and every part to evaluate.

The same few arguments rebuild a saved run's splits exactly (domainbed/runs/run_data.py), so the
tools that evaluate final models again (ensemble, flatness) see what the trainer saw.

`examples_per_domain` (a run setting) keeps a seeded sample of that many items of each domain
before the split, for a quick run on a fraction of the data (the first-minute demo); its results
are not comparable with full-data ones, and collect_results keeps such runs in a group of their own.
"""

import numpy as np

from domainbed import misc
from domainbed.datasets import split_dataset
from domainbed.datasets.official_split import official_split
from domainbed.datasets.splits import SplitDataset
from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import int_at_least
from domainbed.training.evaluator import EvalSplit


def domain_sample(n_items: int, examples_per_domain: int, trial_seed: int, env: int) -> list:
    """The indices of environment `env` that a run keeps: all of them, or a seeded sample of
    `examples_per_domain` when that is set and smaller."""
    if not examples_per_domain or examples_per_domain >= n_items:
        return list(range(n_items))
    rng = np.random.RandomState(misc.seed_hash("examples_per_domain", trial_seed, env))
    return sorted(rng.choice(n_items, examples_per_domain, replace=False).tolist())


def holdout(dataset, env: int, test_envs, holdout_fraction: float, trial_seed: int, split: str = "random",
            split_dir=None, examples_per_domain: int = 0):
    """(out, in) parts of environment `env`. With the random split, DomainBed's: `holdout_fraction`
    of a shuffle seeded by (trial_seed, env). With the official one (PACS), as RSC and DMG train:
    a training domain's in/out parts are its train/crossval lists; the test domain's in part is the
    whole domain (its out part, the crossval list, only serves the oracle row)."""
    environment = dataset[env]
    if split == "official":
        train, validation = official_split(environment, dataset.domain_dirs[env], split_dir)
        keys = range(len(environment)) if env in test_envs else train
        return SplitDataset(environment, validation), SplitDataset(environment, keys)
    keys = domain_sample(len(environment), examples_per_domain, trial_seed, env)
    n_out = int(len(keys) * holdout_fraction)
    return split_dataset(environment, n_out, misc.seed_hash(trial_seed, env), keys)


def make_splits(dataset, test_envs, holdout_fraction: float, trial_seed: int, split: str = "random",
                split_dir=None, examples_per_domain: int = 0, uda_holdout_fraction: float = 0.0):
    """(training `in` splits, evaluation splits), every environment split by `holdout`.
    `uda_holdout_fraction` > 0 takes that fraction of each test domain's `in` part as its `uda`
    part, evaluated as `env{i}_uda`, as DomainBed's train.py for domain adaptation (and with its
    seed, so the same items); nothing here trains on it."""
    train_envs = [env for env in range(len(dataset)) if env not in test_envs]
    train_splits, eval_splits = [], []
    for env in range(len(dataset)):
        out, in_ = holdout(dataset, env, test_envs, holdout_fraction, trial_seed, split, split_dir,
                           examples_per_domain)
        if env in test_envs and uda_holdout_fraction > 0:
            uda, in_ = split_dataset(in_.underlying, int(len(in_) * uda_holdout_fraction),
                                     misc.seed_hash(trial_seed, env), in_.keys)
            uda.transform = dataset.eval_transform
            eval_splits.append(EvalSplit(f"env{env}_uda", uda, env, "uda", None))
        train_domain = train_envs.index(env) if env in train_envs else None
        in_.transform = dataset.train_transform if train_domain is not None else dataset.eval_transform
        out.transform = dataset.eval_transform
        if train_domain is not None:
            train_splits.append(in_)
        eval_splits.append(EvalSplit(f"env{env}_in", in_, env, "in", train_domain))
        eval_splits.append(EvalSplit(f"env{env}_out", out, env, "out", train_domain))
    return train_splits, eval_splits


@run_settings
def _split_settings(hparam, dataset):
    hparam("examples_per_domain", 0, valid=int_at_least(0),
           help="keep a seeded sample of this many items of each domain (0: all); for quick runs, with --split random")
