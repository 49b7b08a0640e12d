"""The Optuna study of one (dataset, algorithm) search: its storage, pruner, sampler and budget.

Every process of a search opens the study from the same storage spec: the sweep's launcher and
workers (which ask for trials and tell their outcomes) and each trial's train_all.py (which
reports its checkpoints and asks whether to stop, domainbed/search/extension.py). A spec holding
`://` is an SQLAlchemy URL (`sqlite:///OUTPUT_DIR/search.db`, the default; `postgresql://...`
on a cluster); any other spec is the path of Optuna's journal file, which is safe on a shared
filesystem that SQLite is not. The settings that fix what a trial means (steps, folds, pruner,
sampler, the train_all.py arguments) are kept in the study's user attribute `settings`, so a
relaunch with other settings is an error, not a silently mixed study, and each process builds
the same pruner from them.

The pruner is Optuna's SuccessiveHalvingPruner, which is ASHA (Li et al., "A System for Massively
Parallel Hyperparameter Tuning", MLSys 2020): a trial reports its training-domain validation
accuracy at every checkpoint, with the steps it has trained so far as the resource, and at rung k
(min_resource * reduction_factor**k steps) it continues only if its value is in the top
1/reduction_factor of the values that trials reached at that rung.

The `random` sampler draws each parameter with Optuna's RandomSampler seeded by (search seed,
trial number, parameter), as DomainBed seeds each draw by (seed, name): a search resumed after a
kill, or run by parallel workers, draws the same candidates as one uninterrupted launch.
"""

from dataclasses import dataclass, field

import optuna

from domainbed import misc
from domainbed.errors import UsageError

SETTINGS = "settings"
HPARAMS = "hparams"  # a trial's user attribute: the hparams its run trains with
PRUNED_AT = "pruned_at_step"  # a trial's user attribute, set by its run when the pruner stops it
SAMPLERS = ("random", "tpe")
DIRECTION = "maximize"  # training-domain validation accuracy

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class SearchConfig:
    """One study: what its trials run and when it stops asking for more."""

    storage: str
    study_name: str
    dataset: str
    algorithm: str
    steps: int | None
    checkpoint_freq: int | None
    train_all_args: list = field(default_factory=list)
    min_resource: int = 1
    reduction_factor: int = 3
    sampler: str = "random"
    seed: int = 0
    n_hparams: int = 20  # at most this many trials
    budget_steps: int | None = None  # no new trial once the trials have trained this many steps

    def settings(self) -> dict:
        """What fixes a trial's meaning: a relaunch must repeat these (n_hparams and budget may grow)."""
        return {"dataset": self.dataset, "algorithm": self.algorithm, "steps": self.steps,
                "checkpoint_freq": self.checkpoint_freq, "train_all_args": list(self.train_all_args),
                "min_resource": self.min_resource, "reduction_factor": self.reduction_factor,
                "sampler": self.sampler, "seed": self.seed}


def open_storage(spec: str):
    if "://" in spec:
        # SQLite waits for a writer rather than failing at once when several workers write
        engine = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(spec, engine_kwargs=engine)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(spec))


class TrialSeededRandomSampler(optuna.samplers.BaseSampler):
    """Optuna's RandomSampler with one seed per (search seed, trial number, parameter)."""

    def __init__(self, seed: int):
        self.seed = seed

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        sampler = optuna.samplers.RandomSampler(seed=misc.seed_hash(self.seed, trial.number, param_name))
        return sampler.sample_independent(study, trial, param_name, param_distribution)


def make_pruner(settings: dict):
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=settings["min_resource"],
                                                  reduction_factor=settings["reduction_factor"])


def make_sampler(settings: dict, n_trials: int):
    if settings["sampler"] == "random":
        return TrialSeededRandomSampler(settings["seed"])
    # TPE conditions on the finished trials; its own random stream is seeded anew per launch
    return optuna.samplers.TPESampler(seed=misc.seed_hash(settings["seed"], n_trials))


def create_study(config: SearchConfig):
    """The study of `config`, created or, on a relaunch, loaded (its settings must match)."""
    study = optuna.create_study(storage=open_storage(config.storage), study_name=config.study_name,
                                direction=DIRECTION, load_if_exists=True)
    settings = config.settings()
    saved = study.user_attrs.get(SETTINGS)
    if saved is None:
        study.set_user_attr(SETTINGS, settings)
    elif saved != settings:
        differences = [f"{key} {saved.get(key)!r} (now {settings[key]!r})" for key in settings
                       if saved.get(key) != settings[key]]
        raise UsageError(f"study {config.study_name} in {config.storage} was launched with other settings: "
                         f"{'; '.join(differences)}; relaunch with its settings or use another --output_dir")
    return _equip(study, settings)


def load_study(storage: str, study_name: str):
    """An existing study, with the pruner and sampler of its settings."""
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise UsageError(f"no study {study_name!r} in {storage}; was the search launched there?") from None
    return _equip(study, study.user_attrs[SETTINGS])


def _equip(study, settings: dict):
    study.pruner = make_pruner(settings)
    study.sampler = make_sampler(settings, len(study.get_trials(deepcopy=False)))
    return study


def running_trial(study, number: int):
    """The `optuna.trial.Trial` of a running trial's number, for another process than the one that
    asked for it (Optuna's public API hands a Trial only to the asking process)."""
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def steps_spent(trial) -> int:
    """The training steps a trial has reported (its resource): the steps it trained up to its last
    checkpoint, which is where a pruned trial stops."""
    return trial.last_step or 0


def total_steps(study) -> int:
    return sum(steps_spent(trial) for trial in study.get_trials(deepcopy=False))


def full_run_steps(trials) -> int:
    """The steps of a whole trial run (every fold to the end), from the finished trials; 0 while
    none has finished."""
    complete = [steps_spent(trial) for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    return max(complete, default=0)


def exhausted(study, config: SearchConfig) -> str | None:
    """Why the search asks for no more trials, or None while it may. The budget is a cap: a new
    trial is asked only while the steps trained, plus what the running trials and the new one
    could still train were they never pruned, stay within it (until a trial has finished, the
    length of a whole run is unknown and only the steps trained count)."""
    trials = study.get_trials(deepcopy=False)
    if len(trials) >= config.n_hparams:
        return f"{len(trials)} trials (--n_hparams {config.n_hparams})"
    if config.budget_steps is not None:
        spent = sum(steps_spent(trial) for trial in trials)
        whole = full_run_steps(trials)
        running = [trial for trial in trials if trial.state == optuna.trial.TrialState.RUNNING]
        committed = spent + sum(max(0, whole - steps_spent(trial)) for trial in running) + whole
        if committed > config.budget_steps or spent >= config.budget_steps:
            return f"{spent} steps trained, a whole run {whole} (--budget_steps {config.budget_steps})"
    return None


def objective(records: dict) -> float:
    """A finished trial's value: the mean over its single-domain folds of the best
    training-domain validation accuracy (`train_out`) over the fold's checkpoints, the number
    DomainBed's training-domain validation selects a checkpoint by."""
    folds = [fold for fold in records if len(fold) == 1]
    if not folds:
        raise UsageError("the trial's run has no records")
    return sum(max(record["train_out"] for record in records[fold]) for fold in folds) / len(folds)
