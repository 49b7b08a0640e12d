"""DomainBed's search space as Optuna suggestions, derived from the declared draws themselves.

A declared draw is a function of a numpy RandomState (`lambda r: 10 ** r.uniform(-4.5, -2.5)`,
domainbed/hparams/declare.py). Rather than restate every distribution in a second, inspectable
form, the search calls the draw with `SuggestingRandomState`, which stands for the RandomState:
each `r.uniform(low, high)` becomes `trial.suggest_float(name, low, high)` and each
`r.choice(options)` becomes `trial.suggest_categorical(name, options)`, and the draw applies its
own transform to the suggested number. So the sampler sees the distribution's own parameter (the
exponent of a log-uniform learning rate, uniform on [-4.5, -2.5]), Optuna's random sampler draws
exactly DomainBed's distribution, and a method's draw needs no change to be searched. Optuna's
`trial.params` therefore hold these parameters (the exponent, not the learning rate); the
hparams a trial trains with are the draws' values, which the search keeps as the trial's user
attribute `hparams`.

A draw that calls `uniform` or `choice` more than once names its further parameters `NAME#1`,
`NAME#2` ...; one that uses another RandomState method is a one-line error naming it.
"""

from domainbed import hparams_registry
from domainbed.hparams.declare import DeclarationError

SUPPORTED = ("uniform", "choice")


class SuggestingRandomState:
    """What a declared draw receives in the search: the RandomState calls it makes become the
    trial's suggestions of the same distributions, named after the hparam."""

    def __init__(self, trial, name: str):
        self.trial = trial
        self.name = name
        self.calls = 0

    def _parameter(self) -> str:
        name = self.name if self.calls == 0 else f"{self.name}#{self.calls}"
        self.calls += 1
        return name

    def uniform(self, low=0.0, high=1.0, size=None):
        if size is not None:
            raise DeclarationError(f"hparam {self.name!r} draws an array (uniform size={size}); the search "
                                   "suggests one number per call")
        return self.trial.suggest_float(self._parameter(), float(low), float(high))

    def choice(self, options, size=None, replace=True, p=None):
        if size is not None or p is not None:
            raise DeclarationError(f"hparam {self.name!r} draws with choice(size=..., p=...); the search "
                                   "suggests one uniform choice per call")
        return self.trial.suggest_categorical(self._parameter(), [_plain(option) for option in options])

    def __getattr__(self, method):
        raise DeclarationError(f"hparam {self.name!r} draws with RandomState.{method}, which the search cannot "
                               f"suggest; valid: {', '.join(SUPPORTED)}")


def _plain(value):
    """A numpy scalar as the python value Optuna stores."""
    return value.item() if hasattr(value, "item") else value


def searched(algorithm: str, dataset: str, fixed=()) -> dict:
    """{name: HParam} of the hparams DomainBed's random search varies for `algorithm` on
    `dataset`, less those in `fixed` (set on the sweep's command line, which wins anyway)."""
    return {name: hp for name, hp in hparams_registry.declarations(algorithm, dataset, run=False).items()
            if hp.searched and name not in fixed}


def suggest_hparams(trial, algorithm: str, dataset: str, fixed=()) -> dict:
    """The searched hparams for `trial`: each declared draw run on the trial's suggestions."""
    return {name: _plain(hp.draw(SuggestingRandomState(trial, name)))
            for name, hp in searched(algorithm, dataset, fixed).items()}
