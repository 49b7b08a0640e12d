"""Hyperparameters: defaults per (algorithm, dataset) and random-search draws, gathered from what
every module declares (domainbed/hparams/declare.py).

As in DomainBed, every hparam is a pair (default, random draw); the random draw of each name
comes from its own RandomState seeded by (random_seed, name), so adding an hparam never changes
the draws of the others. `default_hparams` and `random_hparams` give the hparams of the algorithm
(common ones included), DomainBed's; `run_setting_defaults` the keys of run-level features, and
`own_run_settings` those an algorithm's own repository sets otherwise than config.yaml.
"""

import importlib

from domainbed import misc, plugins

from domainbed.errors import UsageError
from domainbed.hparams.declare import COMMON, RUN_SETTINGS, DeclarationError, Declarations, algorithm_declarations

# the modules that declare common hparams and run settings (each reads what it declares)
DECLARING_MODULES = (
    "domainbed.networks",
    "domainbed.optim.factory",
    "domainbed.datasets.transforms",
    "domainbed.data.sampling",
    "domainbed.averaging.extension",
    "domainbed.quant.extension",
    "domainbed.training.precision",
    "domainbed.training.compiling",
    "domainbed.training.fold_splits",
    "domainbed.training.evaluator",
    "domainbed.training.progress",
    "domainbed.training.initialization",
    "domainbed.data.gpu_pipeline",
    "domainbed.data.loaders",
    "domainbed.datasets.image_folder",
    "domainbed.search.extension",
)


def _import_declaring_modules() -> None:
    for module in DECLARING_MODULES:
        importlib.import_module(module)
    plugins.load_entry_points()


def declarations(algorithm: str, dataset: str, random_seed: int = 0, run: bool = True) -> dict:
    """{name: HParam} of `algorithm` on `dataset`: the common hparams, the algorithm's own and,
    with `run`, the run settings."""
    from domainbed.algorithms import get_algorithm_class

    algorithm_class = get_algorithm_class(algorithm)
    _import_declaring_modules()
    declared = Declarations(dataset, random_seed)
    for declare in COMMON:
        declared.declare("common", declare)
    for declare in algorithm_declarations(algorithm_class):
        declared.declare(algorithm, declare)
    for declare in RUN_SETTINGS if run else ():
        declared.declare("run", declare)
    return declared.hparams


def default_hparams(algorithm: str, dataset: str) -> dict:
    """The defaults of `algorithm` on `dataset`, as a plain dict."""
    return {name: hp.default for name, hp in declarations(algorithm, dataset, run=False).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict:
    """One random-search draw; DomainBed's sweeps seed it with seed_hash(hparams_seed, trial)."""
    return {name: hp.drawn for name, hp in declarations(algorithm, dataset, seed, run=False).items()}


def run_setting_defaults(algorithm: str, dataset: str) -> dict:
    """The defaults of the run-level features' keys (config.yaml may override them)."""
    return {name: hp.default for name, hp in declarations(algorithm, dataset).items() if hp.owner == "run"}


def own_run_settings(algorithm: str, dataset: str) -> dict:
    """The run settings that `algorithm`'s own repository sets otherwise than config.yaml (its
    class's `own_run_settings`), each a declared run setting."""
    from domainbed.algorithms import get_algorithm_class

    settings = dict(get_algorithm_class(algorithm).own_run_settings(dataset))
    run = sorted(name for name, hp in declarations(algorithm, dataset).items() if hp.owner == "run")
    for key in settings:
        if key not in run:
            raise DeclarationError(f"{algorithm}.own_run_settings sets {key!r}, which is no run setting; "
                                   f"valid: {', '.join(run)}")
    return settings


def search_hparams(algorithm: str, dataset: str, hparams_seed: int, trial_seed: int) -> dict:
    """`--hparams_seed`: 0 is the defaults, N > 0 DomainBed's draw seeded by seed_hash(N, trial_seed)."""
    if hparams_seed < 0:
        raise UsageError(f"--hparams_seed {hparams_seed} is negative; use 0 (defaults) or a positive seed")
    if hparams_seed == 0:
        return default_hparams(algorithm, dataset)
    return random_hparams(algorithm, dataset, misc.seed_hash(hparams_seed, trial_seed))
