"""Hyperparameters: defaults per (algorithm, dataset) and random-search distributions.

As in DomainBed, every hparam is a pair (default, random draw); the random draw of each name
comes from its own RandomState seeded by (random_seed, name), so adding an hparam never changes
the draws of the others. A method's block is one function decorated with
`@_algorithm_hparams("Name")`; it may redefine a common hparam (GradSurgery defaults to
ResNet-18, say) and adds its own.
"""

import numpy as np

from domainbed import misc

SMALL_IMAGES = ["Debug28", "RotatedMNIST", "ColoredMNIST", "Synthetic"]

_ALGORITHM_BLOCKS = {}


def _algorithm_hparams(*names):
    def decorator(block):
        for name in names:
            _ALGORITHM_BLOCKS[name] = block
        return block

    return decorator


class _Definer:
    """Collects (default, random draw) pairs; `__call__` defines or redefines one hparam."""

    def __init__(self, random_seed: int):
        self.random_seed = random_seed
        self.hparams = {}

    def __call__(self, name, default, random_fn):
        random_state = np.random.RandomState(misc.seed_hash(self.random_seed, name))
        self.hparams[name] = (default, random_fn(random_state))


def _common(_hparam, dataset):
    _hparam("data_augmentation", True, lambda r: True)
    _hparam("backbone", "resnet50", lambda r: "resnet50")
    _hparam("pretrained", True, lambda r: True)
    _hparam("pretrained_path", "", lambda r: "")
    _hparam("freeze_bn", True, lambda r: True)
    _hparam("resnet_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])))
    _hparam("nonlinear_classifier", False, lambda r: False)
    _hparam("image_size", 224, lambda r: 224)
    _hparam("optimizer", "adam", lambda r: "adam")
    _hparam("mlp_width", 256, lambda r: int(2 ** r.uniform(6, 10)))
    _hparam("mlp_depth", 3, lambda r: int(r.choice([3, 4, 5])))
    _hparam("mlp_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])))

    if dataset in SMALL_IMAGES:
        _hparam("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5))
        _hparam("weight_decay", 0.0, lambda r: 0.0)
        _hparam("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)))
    else:
        _hparam("lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5))
        _hparam("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2))
        high = 5 if dataset == "DomainNet" else 5.5
        _hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, high)))


def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict:
    from domainbed.algorithms import get_algorithm_class

    get_algorithm_class(algorithm)
    _hparam = _Definer(random_seed)
    _common(_hparam, dataset)
    if algorithm in _ALGORITHM_BLOCKS:
        _ALGORITHM_BLOCKS[algorithm](_hparam, dataset)
    return _hparam.hparams


def default_hparams(algorithm: str, dataset: str) -> dict:
    """The defaults of `algorithm` on `dataset`, as a plain dict."""
    return {name: default for name, (default, _) in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict:
    """One random-search draw; DomainBed's sweeps seed it with seed_hash(hparams_seed, trial)."""
    return {name: draw for name, (_, draw) in _hparams(algorithm, dataset, seed).items()}
