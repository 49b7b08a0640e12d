"""Where a fold's weights start, and the fingerprint that tells whether two runs started alike.

    --linear_probe True        train all but the featurizer (linear probing, the LP of LP-FT)
    --init_path RUN_DIR        fold TE{i} starts from RUN_DIR/models/TE{i}_final.pth
    --init_path MODEL_FILE     the fold starts from this saved model (a final model, a kept checkpoint)

DiWA (Ramé et al., NeurIPS 2022) averages the weights of runs that share their initialisation,
and recommends LP-FT (Kumar et al., ICLR 2022): a linear probe is trained once per held-out
domain, then every run of the sweep starts from it. Here the probe is any run with
`--linear_probe True` (DiWA's: ERM, the featurizer frozen, `--swad False`), and the sweep passes
`--init_path` of that run to every job (docs/diwa.md).

The initial model is read with weights_only and its checksum (domainbed/runs/persistence.py) and
loaded strictly into the freshly built algorithm, so it must be of the same architecture (the same
state-dict keys and shapes); any algorithm that builds the same modules may start from it. A saved
model lacks the algorithm's training-only parts (MIRO's frozen pretrained featurizer and variance
encoders, domainbed/training_only.py): those keep the values the fresh algorithm built. It
must come from the same dataset and hold out the same domain as the fold: a model trained on the
fold's test domain would leak it. Everything is checked on the CPU before the run directory exists
(domainbed/training/experiment.py, `check_model`).

Every fold records `fingerprint(algorithm)`, a digest of its parameters as training starts, in its
saved models' metadata (`meta["initial_weights"]`), so that the DiWA tool refuses to average runs
that started elsewhere. The fingerprint reads the weights and touches no random state: a run
without these settings trains exactly as before.
"""

from pathlib import Path

from domainbed.errors import UsageError, first_line
from domainbed.hparams.declare import run_settings
from domainbed.runs import layout, persistence
from domainbed.training_only import load_prediction_state


def init_file(init_path: str, test_envs) -> Path:
    """The model file `init_path` names for the fold holding out `test_envs`."""
    path = Path(init_path)
    if layout.is_run_dir(path):
        model = layout.final_model_path(path, test_envs)
        if not model.is_file():
            saved = ", ".join(f"TE{env}" for env in sorted(layout.final_models(path))) or "none"
            raise UsageError(f"--init_path {path} has no final model for fold {layout.fold_tag(test_envs)} "
                             f"({model.name}); its folds: {saved}")
        return model
    if path.is_dir():
        raise UsageError(f"--init_path {path} is a directory but no run directory (no {layout.ARGS}); give a "
                         "run directory that train_all.py wrote or a model file")
    if not path.is_file():
        raise UsageError(f"--init_path {path} does not exist; give a run directory or a model file")
    return path


def load_initialization(algorithm, init_path: str, dataset, test_envs) -> None:
    """Load the initial model `init_path` names for this fold into `algorithm`, strictly."""
    path = init_file(init_path, test_envs)
    saved = persistence.load(path, "init model")
    if not isinstance(saved, dict) or "meta" not in saved or "model_dict" not in saved:
        raise UsageError(f"init model {path} holds no model (meta and model_dict)")
    meta = saved["meta"]
    if list(meta["environments"]) != list(dataset.environments):
        raise UsageError(f"init model {path} is of {meta['dataset']} (domains {', '.join(meta['environments'])}), "
                         f"this run's data has domains {', '.join(dataset.environments)}")
    if sorted(meta["test_envs"]) != sorted(test_envs):
        raise UsageError(f"init model {path} was trained holding out {layout.fold_tag(meta['test_envs'])}, so it has "
                         f"seen the test domain of fold {layout.fold_tag(test_envs)}; give the run directory of "
                         "the initialisation (one final model per fold)")
    try:
        load_prediction_state(algorithm, saved["model_dict"])
    except RuntimeError as error:
        raise UsageError(f"init model {path} ({meta['algorithm']}) does not fit this {type(algorithm).__name__}: "
                         f"{first_line(error)}") from None


def freeze_featurizer(algorithm) -> None:
    """Linear probing: the featurizer's parameters get no gradient, so no optimizer moves them."""
    featurizer = getattr(algorithm, "featurizer", None)
    if featurizer is None:
        raise UsageError(f"--linear_probe freezes the featurizer, and {type(algorithm).__name__} has none; "
                         "drop --linear_probe")
    featurizer.requires_grad_(False)


def initialize(algorithm, hparams: dict, dataset, test_envs) -> None:
    """Start a freshly built `algorithm` (on the CPU, before its first step) as the run settings say."""
    if hparams["init_path"]:
        load_initialization(algorithm, hparams["init_path"], dataset, test_envs)
    if hparams["linear_probe"]:
        freeze_featurizer(algorithm)


def fingerprint(algorithm) -> str:
    """sha256 over the names, dtypes, shapes and values of `algorithm`'s parameters."""
    return persistence.digest(dict(algorithm.named_parameters()))


@run_settings
def _initialization_settings(hparam, dataset):
    hparam("init_path", "", help="start every fold from a saved model: a run directory (its fold's final model) "
                                 "or a model file (DiWA's shared init, LP-FT); empty: the algorithm's own init")
    hparam("linear_probe", False, help="train all but the featurizer, which keeps its initial weights (LP of LP-FT)")
