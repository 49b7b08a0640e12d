"""DiWA (Ramé et al., "Diverse Weight Averaging for Out-of-Distribution Generalization", NeurIPS
2022): the uniform average of the weights of M runs that started from the same initialisation,

    theta_WA = (1 / M) * sum_m theta_m,

and its restricted (greedy) weight selection: the runs, ranked by their own training-domain
validation accuracy, best first, join the average one after the other, and a run stays only if the
average's validation accuracy does not drop (ties are kept, as the official code's `>=`).

Where this differs from alexrame/diwa, and why:

- Sums are taken in float64 and divided once, so an average does not depend on the order in which
  the runs are added, up to the final rounding to the weights' dtype (the official code keeps a
  running mean in the weights' dtype).
- As the official code (a copy of the first network with averaged parameters), buffers are the
  first run's: BatchNorm statistics that every run kept frozen (a pretrained ResNet with
  `freeze_bn`, DiWA's setting) are the same in every run. When the network updates them in
  training, the caller re-estimates them for the average (domainbed/averaging/batchnorm.py), as
  SWAD does; DiWA never needs to.
"""

import math

import torch
import torch.nn as nn

from domainbed.averaging.averaged_model import state_copy
from domainbed.errors import UsageError


class ParameterMean:
    """The uniform average of the parameters of the models added, kept as float64 sums.

    `average()` writes the mean into one copy of the first model added (its buffers, and its
    class's `predict`, are the average's) and returns that copy; `average(extra)` is the mean with
    `extra` included without adding it, for a selection that tries a model before keeping it.
    """

    def __init__(self):
        self.model = None
        self.sums = None
        self.names = None
        self.count = 0

    def _parameters(self, model: nn.Module, source: str) -> list:
        named = list(model.named_parameters())
        if self.names is not None and [(name, tuple(p.shape)) for name, p in named] != self.names:
            raise UsageError(f"{source} has other parameters (names or shapes) than the models averaged so far")
        return [p.detach() for _, p in named]

    @torch.no_grad()
    def add(self, model: nn.Module, source: str = "the model") -> None:
        """Add `model`'s parameters; `source` names it in the error when they do not fit."""
        parameters = self._parameters(model, source)
        if self.model is None:
            self.model = state_copy(model)
            self.names = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
            self.sums = [p.to(torch.float64, copy=True) for p in parameters]
        else:
            torch._foreach_add_(self.sums, [p.to(torch.float64) for p in parameters])
        self.count += 1

    @torch.no_grad()
    def average(self, extra: nn.Module | None = None, source: str = "the model") -> nn.Module:
        """The average of the models added (and of `extra`, which is not added)."""
        if extra is None and self.model is None:
            raise ValueError("no model was added to the average")
        if self.model is None:
            return state_copy(extra)
        sums, count = self.sums, self.count
        if extra is not None:
            sums = torch._foreach_add(self.sums, [p.to(torch.float64) for p in self._parameters(extra, source)])
            count += 1
        for target, total in zip(self.model.parameters(), sums):
            target.copy_(total / count)
        return self.model


def uniform_average(models) -> nn.Module:
    """theta_WA of `models` (nn.Modules of one architecture), buffers from the first."""
    mean = ParameterMean()
    for index, model in enumerate(models):
        mean.add(model, f"model {index}")
    return mean.average()


def greedy_average(ranked, load, validation_accuracy, log=print):
    """DiWA's restricted weight selection over `ranked` (run labels, best validation accuracy first):
    `load(label)` gives a run's model, `validation_accuracy(model)` scores an average. Returns
    (the average of the runs kept, their labels, [(label, validation accuracy of the trial average, kept)])."""
    mean = ParameterMean()
    kept, trials, best = [], [], -math.inf
    for label in ranked:
        model = load(label)
        accuracy = validation_accuracy(mean.average(model, label))
        keep = accuracy >= best
        trials.append((label, accuracy, keep))
        log(f"{'keeping' if keep else 'skipping'} {label}: the average of {len(kept) + 1} runs has validation "
            f"accuracy {100 * accuracy:.2f}% (best so far {100 * max(best, accuracy):.2f}%)")
        if keep:
            mean.add(model, label)
            kept.append(label)
            best = accuracy
        del model
    return mean.average(), kept, trials
