"""How hyperparameters are declared: next to the code that reads them.

Every hparam is declared once, by the module that reads it, with everything the harness derives
from it: its default (which may depend on the dataset), DomainBed's random-search distribution,
its valid range and one line of meaning. `hparams_registry` gathers the declarations into the
defaults and `--hparams_seed` draws, `--help` lists them, and the checks apply their ranges
before a run creates anything.

A declaration is a function `declare(hparam, dataset)` that calls

    hparam(name, default, draw=None, valid=None, help=None)

- `draw(random_state)` is DomainBed's distribution; each name draws from its own RandomState
  seeded by (random seed, name), so adding an hparam never changes the draws of the others.
  Without `draw` the random search keeps the default. The draw itself is kept (`HParam.draw`):
  the Optuna search (domainbed/search/space.py) calls it with a stand-in RandomState that turns
  each `uniform` or `choice` into the Optuna suggestion of the same distribution.
- `valid` is a `Rule` (domainbed/hparams/rules.py), or for a mapping {leaf: Rule}; without it
  any value of the default's type is valid.
- `help` is one line; it is required the first time a name is declared.

A later declaration of the same name redefines its default and draw and keeps its range and
help unless it gives its own (GradSurgery defaults to ResNet-18, say). Three kinds of
declarations exist, gathered in this order:

- `@common_hparams`: what every algorithm has (backbone, optimizer, batch size ...), declared by
  networks/, optim/ and data/;
- an algorithm's own: the classmethod `declare_hparams(hparam, dataset)` of its class and of
  each base class that defines one, base classes first;
- `@run_settings`: keys of run-level features (weight averaging, quantization, precision, the
  input pipeline), which are no part of the random search; config.yaml may set them.
"""

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from domainbed import misc
from domainbed.errors import UsageError
from domainbed.hparams.rules import Rule

COMMON = []
RUN_SETTINGS = []
# DomainBed's datasets of small images, whose common hparams (lr, batch size, weight decay) differ
SMALL_IMAGES = ("Debug28", "RotatedMNIST", "ColoredMNIST", "Synthetic")


def common_hparams(declare: Callable) -> Callable:
    """Decorator: `declare(hparam, dataset)` declares hparams that every algorithm has."""
    COMMON.append(declare)
    return declare


def run_settings(declare: Callable) -> Callable:
    """Decorator: `declare(hparam, dataset)` declares the keys of a run-level feature."""
    RUN_SETTINGS.append(declare)
    return declare


@dataclass(frozen=True)
class HParam:
    name: str
    default: object
    drawn: object  # the value of the random search for the declarations' seed
    valid: Rule | dict | None
    help: str
    searched: bool  # whether the random search varies it
    owner: str  # who declared it first: "common", "run", or an algorithm's name
    draw: Callable | None = None  # the declared draw(random_state), None when not searched


class DeclarationError(UsageError):
    """A declaration that breaks the rules above: a defect of the declaring module, reported in one
    line (it may be a method from outside the repository)."""


class Declarations:
    """Collects the declarations made for one dataset and one random seed."""

    def __init__(self, dataset: str, random_seed: int = 0):
        self.dataset = dataset
        self.random_seed = random_seed
        self.hparams = {}
        self.owner = "common"

    def __call__(self, name: str, default, draw: Callable | None = None, valid=None, help: str | None = None):
        earlier = self.hparams.get(name)
        if earlier is None and not help:
            raise DeclarationError(f"{self.owner} declares hparam {name!r} without help (one line of meaning)")
        if draw is None:
            drawn = default
        else:
            drawn = draw(np.random.RandomState(misc.seed_hash(self.random_seed, name)))
        if earlier is None:
            self.hparams[name] = HParam(name, default, drawn, valid, help, draw is not None, self.owner, draw)
        else:
            self.hparams[name] = replace(earlier, default=default, drawn=drawn, searched=draw is not None, draw=draw,
                                         valid=valid if valid is not None else earlier.valid,
                                         help=help or earlier.help)

    def declare(self, owner: str, declare: Callable) -> None:
        """Run `declare(hparam, dataset)` as `owner`."""
        self.owner = owner
        declare(self, self.dataset)


def algorithm_declarations(algorithm_class) -> list:
    """The `declare_hparams` classmethods of `algorithm_class` and its bases, bases first."""
    return [cls.__dict__["declare_hparams"].__get__(None, algorithm_class)
            for cls in reversed(algorithm_class.__mro__) if "declare_hparams" in cls.__dict__]
