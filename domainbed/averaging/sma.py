"""EoA's simple moving average, selected as the paper selects it (Arpit et al., "Ensemble of
Averages: Improving Model Selection and Boosting Performance in Domain Generalization",
NeurIPS 2022).

The SMA at step t is the uniform average of the weights after every step from `sma_start` to t;
segments are merged weighted by their number of steps, which is the same uniform average. EoA
evaluates the SMA at every checkpoint from `sma_start` on and keeps the one of best
training-domain validation accuracy (the paper's model selection, Sec. 3); that kept SMA, not the
last one, is the final model. `evaluate(model)` returns that accuracy (the trainer's evaluator's
`train_out`): one extra evaluation per checkpoint, as in EoA. Ties keep the earlier SMA.

Departures from EoA's code: its `MovingAvg` (sma_start_iter = 100) counts iterations from 1 and
seeds the average with the model one iteration earlier, so it also includes the models after
0-based steps sma_start - 2 and sma_start - 1; we average steps >= sma_start, as the paper states.
One version of EoA's code also averages BatchNorm statistics; we average parameters only and
re-estimate the statistics of the kept model when the network updates them (averaging/batchnorm.py).
"""

import copy

import torch.nn as nn

from domainbed.averaging.averaged_model import AveragedModel


class SMA:
    dead_valley = False

    def __init__(self, evaluate, sma_start: int, log=print):
        self.evaluate = evaluate
        self.sma_start = sma_start
        self.log = log
        # the running average, and the best-validation copy of it with its accuracy (EoA's model)
        self.average, self.best, self.best_acc = None, None, None

    def update_and_evaluate(self, segment_model: AveragedModel, val_acc: float, val_loss: float) -> None:
        if segment_model.n_averaged == 0:
            return
        if self.average is None:
            self.average = AveragedModel(segment_model)
        self.average.merge(segment_model)
        sma_val_acc = self.evaluate(self.average)
        self.log(f"SMA: average {self.average.describe()} has validation accuracy {sma_val_acc:.4f}")
        if self.best is None or sma_val_acc > self.best_acc:
            self.best_acc = sma_val_acc
            self.best = copy.deepcopy(self.average)

    def get_final_model(self) -> AveragedModel | None:
        """The SMA of best training-domain validation accuracy."""
        return self.best

    def state_dict(self) -> dict:
        return {name: None if getattr(self, name) is None else getattr(self, name).averaging_state()
                for name in ("average", "best")} | {"best_acc": self.best_acc}

    def load_state_dict(self, state: dict, template: nn.Module) -> None:
        self.average, self.best = (None if state[name] is None else AveragedModel.from_state(template, state[name])
                                   for name in ("average", "best"))
        self.best_acc = state["best_acc"]
