"""SWAD's IIDMax: the average restarts from the current segment whenever the training-domain
validation accuracy reaches a new maximum and grows by one segment per checkpoint otherwise; the
final model is the copy of that average with the best validation accuracy of its own, which costs
one extra evaluation per checkpoint. SWAD crashes when the first accuracy is 0; we start there.
"""

import copy

import torch.nn as nn

from domainbed.averaging.averaged_model import AveragedModel


class IIDMax:
    """`evaluate(model)` returns a model's training-domain validation accuracy (the trainer's
    evaluator's `train_out`)."""

    dead_valley = False

    def __init__(self, evaluate, log=print):
        self.evaluate = evaluate
        self.log = log
        self.iid_max_acc = 0.0
        self.swa_max_acc = 0.0
        self.avgmodel = None
        self.final_model = None

    def update_and_evaluate(self, segment_model: AveragedModel, val_acc: float, val_loss: float) -> None:
        if self.avgmodel is None or self.iid_max_acc < val_acc:
            self.iid_max_acc = val_acc
            self.avgmodel = AveragedModel(segment_model)
            self.avgmodel.start_step = segment_model.start_step
        self.avgmodel.update_parameters(segment_model)
        self.avgmodel.end_step = segment_model.end_step
        swa_val_acc = self.evaluate(self.avgmodel)
        self.log(f"IIDMax: average {self.avgmodel.describe()} has validation accuracy {swa_val_acc:.4f}")
        if self.final_model is None or swa_val_acc > self.swa_max_acc:
            self.swa_max_acc = swa_val_acc
            self.final_model = copy.deepcopy(self.avgmodel)

    def get_final_model(self) -> AveragedModel | None:
        return self.final_model

    def state_dict(self) -> dict:
        return {"iid_max_acc": self.iid_max_acc, "swa_max_acc": self.swa_max_acc,
                "avgmodel": None if self.avgmodel is None else self.avgmodel.averaging_state(),
                "final_model": None if self.final_model is None else self.final_model.averaging_state()}

    def load_state_dict(self, state: dict, template: nn.Module) -> None:
        self.iid_max_acc, self.swa_max_acc = state["iid_max_acc"], state["swa_max_acc"]
        self.avgmodel, self.final_model = (
            None if state[key] is None else AveragedModel.from_state(template, state[key])
            for key in ("avgmodel", "final_model"))
