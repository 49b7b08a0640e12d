"""Weight averaging as a trainer extension, so that every algorithm can be trained with it.

    --swad LossValley | IIDMax | SMA | False      (True = LossValley, as SWAD's config)
    --swad_kwargs "{n_converge: 3, n_tolerance: 6, tolerance_ratio: 0.3, bookkeeping: reference}"
    --sma_start 100                                (SMA only)
    --swad_bn_steps 500                            (BatchNorm re-estimation, when the network updates it)

These keys are declared at the end of this module (defaults, ranges, meaning); config.yaml sets
them for SWAD's protocol. After every step the segment average (the
steps since the last checkpoint, from `sma_start` on for SMA) takes in the new weights; at every
checkpoint the strategy receives it with the checkpoint's training-domain validation accuracy and
loss (`train_out`, `tr_outloss`), and a new segment starts. A dead loss valley stops the fold, as
in SWAD. After training the strategy's final model (its BatchNorm statistics re-estimated on
`swad_bn_steps` training minibatches when any BatchNorm layer of the network updates its
statistics in training, see averaging/batchnorm.py) is evaluated, adds the rows `SWAD` and
`SWAD (inD)` (`IIDMax` / `IIDMax (inD)`, `SMA` / `SMA (inD)` for those strategies), and becomes
the fold's saved final model.

Every evaluation of an average (IIDMax's and SMA's per checkpoint, the final model's) must be
finite: a NaN loss or accuracy stops the run with one line (domainbed/training/finite_numbers.py)
rather than become a row.

When the algorithm's parameters change identity (quantization swaps Conv2d for QuantConv2d, say)
the averaging restarts from the new model, as the QT-DoG code restarts SWAD at its swap. An
extension that swaps modules may also call `restart(fold)` itself.
"""

from domainbed.averaging.averaged_model import AveragedModel, state_copy
from domainbed.averaging.batchnorm import batchnorm_note, update_bn, updates_batchnorm_statistics
from domainbed.averaging.iid_max import IIDMax
from domainbed.averaging.loss_valley import BOOKKEEPING, LossValley
from domainbed.averaging.sma import SMA
from domainbed.errors import UsageError, unknown_choice
from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import choice, int_at_least, nonnegative_float, satisfies
from domainbed.training.extensions import Extension, register_extension
from domainbed.training.finite_numbers import require_finite

# Before quantization (order 90), whose `finish` reports the size of our final model.
ORDER = 50
STRATEGIES = ("LossValley", "IIDMax", "SMA")
ROW_NAMES = {"LossValley": "SWAD", "IIDMax": "IIDMax", "SMA": "SMA"}
RULES = {
    "LossValley": "test-domain accuracy of SWAD's dense weight average over the valley of the "
                  "training-domain validation loss (LossValley)",
    "IIDMax": "test-domain accuracy of the weight average from the checkpoint of best training-domain "
              "validation accuracy, kept where its own validation accuracy was best (SWAD's IIDMax)",
    "SMA": "test-domain accuracy of the uniform weight average of every step from sma_start on, taken at the "
           "checkpoint where its training-domain validation accuracy was best (EoA's SMA)",
}
_OFF = {"false", "none", "off", "no", "0", ""}
_ON = {"true", "yes", "on", "1"}


def evaluate_average(fold, model, name: str) -> dict:
    """The summaries of the evaluation of `model`, the average `name`, which must be finite."""
    accuracies, losses, summaries = fold.evaluator.evaluate(model)
    numbers = {**summaries, **accuracies, **{f"{split}_loss": loss for split, loss in losses.items()}}
    require_finite(numbers, f"[{fold.name}] {name}",
                   "no row is built on it (results.jsonl and the checkpoints are kept): lower the lr or check the inputs")
    return summaries


def strategy_name(value) -> str | None:
    """The strategy `--swad value` selects, or None for no averaging."""
    text = str(value).strip()
    if text.lower() in _OFF:
        return None
    if text.lower() in _ON:
        return "LossValley"
    for name in STRATEGIES:
        if text.lower() == name.lower():
            return name
    raise unknown_choice("--swad strategy", value, [*STRATEGIES, "False", "True (= LossValley)"])


class WeightAveraging(Extension):
    def __init__(self, strategy: str, hparams: dict):
        self.strategy_name = strategy
        self.row = ROW_NAMES[strategy]
        self.kwargs = dict(hparams["swad_kwargs"])
        self.sma_start = hparams["sma_start"]
        self.first_step = self.sma_start if strategy == "SMA" else 0
        self.bn_steps = hparams["swad_bn_steps"]
        self.segment = None
        self.strategy = None
        self._template = None
        self._tracked = []
        self._pending_state = None

    def _new_strategy(self, fold):
        def log(message):
            fold.log(f"[{fold.name}] {message}")

        def validation_accuracy(model):
            return evaluate_average(fold, model, f"{self.row} average {model.describe()}")["train_out"]

        if self.strategy_name == "LossValley":
            return LossValley(**self.kwargs, log=log)
        if self.strategy_name == "IIDMax":
            return IIDMax(validation_accuracy, log=log)
        return SMA(validation_accuracy, self.sma_start, log=log)

    def setup(self, fold) -> None:
        self.restart(fold)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
            self._pending_state = None

    def restart(self, fold, step: int | None = None) -> None:
        """Start averaging afresh from the current model: a new segment and a new strategy.
        Call it (with the step about to run) after changing the algorithm's module tree."""
        self.segment = AveragedModel(fold.algorithm)
        self.strategy = self._new_strategy(fold)
        self._template = fold.algorithm
        self._tracked = list(fold.algorithm.parameters())
        if step is not None:
            fold.log(f"[{fold.name}] the model's parameters changed: weight averaging restarts at step {step}")

    def after_step(self, fold, step: int) -> None:
        params = list(fold.algorithm.parameters())
        if len(params) != len(self._tracked) or any(a is not b for a, b in zip(params, self._tracked)):
            self.restart(fold, step)
        if step >= self.first_step:
            self.segment.update_parameters(fold.algorithm, step=step, params=params)

    def at_checkpoint(self, fold, step: int, record: dict) -> None:
        if "train_out" not in record or "tr_outloss" not in record:
            raise UsageError(f"{self.row} follows the training domains' validation accuracy and loss, but their out "
                             "splits are empty (too few items for --holdout_fraction); give it more data, a larger "
                             "--holdout_fraction, or --swad False")
        self.strategy.update_and_evaluate(self.segment, record["train_out"], record["tr_outloss"])
        if self.strategy.dead_valley:
            fold.stop = True
        self.segment = AveragedModel(fold.algorithm)

    def finish(self, fold, rows: dict) -> None:
        averaged = self.strategy.get_final_model()
        if averaged is None:
            fold.log(f"[{fold.name}] {self.row}: nothing was averaged (training ended before step "
                     f"{self.first_step}); its rows are those of the last model")
            model, span = state_copy(fold.algorithm), "the last model"
        else:
            model, span = averaged.module.to(fold.device), averaged.describe()
        batchnorm = batchnorm_note(fold.algorithm, self.bn_steps)
        if self.bn_steps and updates_batchnorm_statistics(fold.algorithm):
            fold.log(f"[{fold.name}] {self.row}: re-estimating BatchNorm statistics on {self.bn_steps} minibatches")
            update_bn(model, fold.train_minibatches, self.bn_steps)
        summaries = evaluate_average(fold, model, f"{self.row} {span}")
        rows[self.row] = summaries["test_in"]
        rows[f"{self.row} (inD)"] = summaries["train_out"]
        fold.row_rules[self.row] = f"{RULES[self.strategy_name]}; {batchnorm}"
        fold.row_rules[f"{self.row} (inD)"] = (
            f"training-domain validation accuracy of the {self.row} average (in-domain)")
        fold.final_model = model
        fold.log(f"[{fold.name}] {self.row} {span}: test_in {summaries['test_in']:.4f}, "
                 f"train_out {summaries['train_out']:.4f}")

    def state_dict(self) -> dict:
        return {"strategy": self.strategy_name, "segment": self.segment.averaging_state(),
                "strategy_state": self.strategy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restores what `state_dict` returned; before `setup` it is kept until then."""
        if self.segment is None:
            self._pending_state = state
            return
        if state["strategy"] != self.strategy_name:
            raise UsageError(f"saved averaging state is for {state['strategy']}, this run uses {self.strategy_name}")
        device = next(self._template.parameters()).device
        self.segment = AveragedModel.from_state(self._template, state["segment"], device)
        self.strategy.load_state_dict(state["strategy_state"], self._template)
        # a resumed run may have replayed a module swap (quantization) since setup
        self._tracked = list(self._template.parameters())


@register_extension(ORDER)
def weight_averaging(hparams: dict) -> WeightAveraging | None:
    strategy = strategy_name(hparams["swad"])
    return None if strategy is None else WeightAveraging(strategy, hparams)


@run_settings
def _averaging_settings(hparam, dataset):
    hparam("swad", "LossValley", valid=satisfies("one of LossValley, IIDMax, SMA, False, True (= LossValley)",
                                                  strategy_name),
           help="weight averaging: LossValley (SWAD), IIDMax, SMA (EoA), or False")
    hparam("swad_kwargs", {"n_converge": 3, "n_tolerance": 6, "tolerance_ratio": 0.3, "bookkeeping": "reference"},
           valid={"n_converge": int_at_least(1), "n_tolerance": int_at_least(1),
                  "tolerance_ratio": nonnegative_float(), "bookkeeping": choice(BOOKKEEPING)},
           help="LossValley's n_converge, n_tolerance, tolerance_ratio and bookkeeping (reference or corrected)")
    hparam("sma_start", 100, valid=int_at_least(0), help="SMA averages every step from this one on")
    hparam("swad_bn_steps", 500, valid=int_at_least(0),
           help="training minibatches that re-estimate the average's BatchNorm statistics (freeze_bn False)")
