"""The trial's side of the hparam search: report each checkpoint, stop when the pruner says so.

A run launched as a trial of `sweep launch --search asha` carries the run settings
`search_storage`, `search_study` and `search_trial` (empty, empty, -1 otherwise). At every
checkpoint of a single-domain fold it reports the record's training-domain validation accuracy
(`train_out`) to its trial, at the steps the run has trained so far (the folds before this one
included: folds run one after the other, so every trial reaches step s of the run on the same
fold and step, and the pruner compares like with like). When the pruner then stops the trial,
the run ends there (`EndRun`): the decision is taken on this checkpoint's record, before the
next step, so a pruned trial trains exactly the steps its last report names.
"""

from domainbed import distributed
from domainbed.errors import UsageError
from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import int_at_least
from domainbed.training.extensions import EndRun, Extension, register_extension

ORDER = 100  # after the extensions that add to the record (weight averaging, quantization)


@run_settings
def declare_hparams(hparam, dataset):
    hparam("search_storage", "", help="Optuna storage of the hparam search whose trial this run is "
                                      "(set by sweep --search); empty: no search")
    hparam("search_study", "", help="the study of that search")
    hparam("search_trial", -1, valid=int_at_least(-1), help="the number of this run's trial in that study")


class SearchReport(Extension):
    def __init__(self, storage: str, study_name: str, number: int):
        self.storage = storage
        self.study_name = study_name
        self.number = number
        self.trial = None

    def check_model(self, algorithm, algorithm_name: str) -> None:
        # every process would report, and the pruner could stop one process of the run but not the others
        if distributed.launched_world_size() > 1:
            raise UsageError(f"a search trial trains in one process, not {distributed.launched_world_size()} "
                             "(torchrun): give each trial one GPU (sweep --launcher multi_gpu or slurm)")

    def setup(self, fold) -> None:
        from domainbed.search.study import load_study, running_trial

        self.trial = running_trial(load_study(self.storage, self.study_name), self.number)

    def at_checkpoint(self, fold, step: int, record: dict) -> None:
        if len(fold.settings.test_envs) != 1:  # pair folds feed leave-one-domain-out selection only
            return
        from domainbed.search.study import PRUNED_AT

        trained = fold.settings.earlier_steps + step + 1
        self.trial.report(record["train_out"], trained)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_AT, trained)
            raise EndRun(f"the search pruned trial {self.number} of study {self.study_name} after {trained} "
                         f"steps (training-domain validation accuracy {record['train_out']:.4f})")


@register_extension(ORDER)
def search_report(hparams):
    if not hparams["search_storage"]:
        return None
    return SearchReport(hparams["search_storage"], hparams["search_study"], hparams["search_trial"])
