"""Weight averaging: SWAD's LossValley and IIDMax (Cha et al., "SWAD: Domain Generalization by
Seeking Flat Minima", NeurIPS 2021) and the simple moving average of EoA (Arpit et al.,
"Ensemble of Averages: Improving Model Selection and Boosting Performance in Domain
Generalization", NeurIPS 2022).

The trainer keeps a *segment* average: a running uniform average of the weights after every
step since the last checkpoint. At each checkpoint a strategy receives that segment with the
training-domain validation accuracy and loss measured there,

    strategy.update_and_evaluate(segment_model, val_acc, val_loss)

and after training `strategy.get_final_model()` is the averaged model. `dead_valley` tells the
trainer to stop (only LossValley sets it). This is the contract of SWAD's `domainbed/swad.py`.

LossValley, with n_c = n_converge, n_t = n_tolerance, r = tolerance_ratio and L_t the loss of
segment S_t:
- converged at the first checkpoint t at which the oldest of the last n_c segments has the lowest
  loss among them (ties: the oldest); S_c = that segment, threshold = mean(L of those n_c) * (1 + r);
- the queued segments before S_c whose loss is under the threshold are prepended;
- from then on each segment joins the average once it is the oldest of the last n_t segments,
  unless the minimum loss over those n_t exceeds the threshold: the valley is dead and training
  stops;
- after training the queue is drained with the same test.
If it never converged, the last segment's average is the final model (and the log says so).

`bookkeeping="reference"` (the default) reproduces SWAD's official implementation exactly,
including these quirks, which the published SWAD numbers come from:
1. The start segment is overwritten: the final average is created from S_c with n_averaged = 0,
   so the next update replaces its weights instead of averaging with them.
2. Off by one when prepending: of the queued segments up to S_c, scanning back from S_c to the
   first one above the threshold at index i, the average takes indices i + 2 onwards, so the
   earliest qualifying segment (i + 1, or index 0 when none is above) is skipped.
3. Segments averaged twice: S_c is prepended (as the last of that list) and added again when
   it becomes the oldest of the smooth queue. When convergence comes before the smooth queue is
   full (within the first n_t checkpoints), the "prepended" list holds segments *after* S_c, and
   the oldest segment stays at the head of the queue, and is added, at every checkpoint until
   the queue fills.
4. The drain drops the head of the queue unconditionally (it assumes the head was added at the
   last checkpoint) and then adds the rest, including segments that were already prepended when
   training ends within n_c - 1 checkpoints of convergence.
5. The drain's updates pass `step=end_step`, so an average that starts there reports its
   start_step as that segment's last step.
`bookkeeping="corrected"` averages each segment in the valley exactly once: S_c, the qualifying
queued segments before it (all of them), then every later one, each once, with the same
convergence, threshold and death tests.

IIDMax (as SWAD's): the average restarts from the current segment whenever the training-domain
validation accuracy reaches a new maximum and grows by one segment per checkpoint otherwise; the
final model is the copy of that average with the best validation accuracy of its own, which costs
one extra evaluation per checkpoint. SWAD crashes when the first accuracy is 0; we start there.

SMA (EoA's): the uniform average of the weights after every step from `sma_start` on; segments
are merged weighted by their number of steps, which is the same uniform average. EoA's code
(`MovingAvg`, sma_start_iter = 100) counts iterations from 1 and seeds the average with the model
one iteration earlier, so it also includes the models after 0-based steps sma_start - 2 and
sma_start - 1; we average steps >= sma_start, as the paper states. EoA also averages BatchNorm
statistics in one of its versions; we average parameters only (all strategies re-estimate BatchNorm
statistics when it is not frozen).

AveragedModel differs from SWAD's swa_utils.AveragedModel where it costs time or memory, not in
what it computes: n_averaged is a python int (SWAD's is a device tensor, a host synchronisation
per step), the update is one fused foreach lerp, avg.lerp_(w, 1 / (n + 1)), where SWAD loops over
the parameters computing avg + (w - avg) / (n + 1) (equal up to float rounding; about 3x faster
on the CPU: no temporary), and the copy leaves out the algorithm's optimizers instead of copying
their state.
"""

import copy
import itertools
from collections import deque

import numpy as np
import torch
import torch.nn as nn

from domainbed.errors import unknown_choice

BOOKKEEPING = ("reference", "corrected")


def _optimizers_in(model: nn.Module) -> list:
    """Every optimizer an algorithm holds (directly or in a list or dict attribute)."""
    found = []
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, dict):
                value = list(value.values())
            values = value if isinstance(value, (list, tuple)) else [value]
            found += [v for v in values if isinstance(v, torch.optim.Optimizer)]
    return found


def copy_without_optimizers(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose optimizer attributes are None: the averaged model never
    steps, and copying Adam's state would triple the memory of every segment."""
    return copy.deepcopy(model, memo={id(optimizer): None for optimizer in _optimizers_in(model)})


class AveragedModel(nn.Module):
    """The running uniform average of the parameters of the models passed to `update_parameters`.

    `module` is a copy of the first model (buffers stay as copied: BatchNorm statistics are not
    averaged), `n_averaged` counts the updates since the average was (re)started, `start_step` /
    `end_step` are the step range as SWAD reports it (-1 until set), and `sources` lists the
    (start, end) step range of every model in the average, for logs and tests.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        source = model.module if isinstance(model, AveragedModel) else model
        self.module = copy_without_optimizers(source)
        self.n_averaged = 0
        self.start_step = -1
        self.end_step = -1
        self.sources = []

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def predict(self, *args, **kwargs):
        return self.module.predict(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module, step=None, start_step=None, end_step=None, params=None):
        """avg <- avg + (w - avg) / (n_averaged + 1) (a lerp); the first update copies w. `step` sets both
        ends of the range; the start is recorded only by the first update, as SWAD's.
        `params` may pass `list(model.parameters())` when the caller already has it."""
        source = model.module if isinstance(model, AveragedModel) else model
        averaged = list(self.module.parameters())
        current = [p.detach() for p in (params if params is not None else source.parameters())]
        if len(averaged) != len(current):
            raise ValueError(f"cannot average a model of {len(current)} parameters into one of {len(averaged)}")
        if self.n_averaged == 0:
            torch._foreach_copy_(averaged, current)
            self.sources = []
        else:
            torch._foreach_lerp_(averaged, current, 1.0 / (self.n_averaged + 1))
        self.n_averaged += 1
        if isinstance(model, AveragedModel):
            self.sources.append((model.start_step, model.end_step))
        elif step is not None:
            self.sources.append((step, step))

        if step is not None:
            start_step = step if start_step is None else start_step
            end_step = step if end_step is None else end_step
        if start_step is not None and self.n_averaged == 1:
            self.start_step = start_step
        if end_step is not None:
            self.end_step = end_step

    @torch.no_grad()
    def merge(self, other: "AveragedModel") -> None:
        """Fold in another average, weighted by its `n_averaged`: the result is the uniform
        average over the union of both averages' models."""
        if other.n_averaged == 0:
            return
        averaged = list(self.module.parameters())
        current = [p.detach() for p in other.module.parameters()]
        if self.n_averaged == 0:
            torch._foreach_copy_(averaged, current)
            self.start_step, self.sources = other.start_step, []
        else:
            torch._foreach_lerp_(averaged, current, other.n_averaged / (self.n_averaged + other.n_averaged))
        self.n_averaged += other.n_averaged
        self.end_step = other.end_step
        self.sources += other.sources

    def frozen(self, device="cpu") -> "AveragedModel":
        """A copy on `device` that later updates of this one leave alone."""
        return copy.deepcopy(self).to(device)

    def describe(self) -> str:
        return f"[{self.start_step}-{self.end_step}] (N={self.n_averaged})"

    def averaging_state(self) -> dict:
        return {"module": self.module.state_dict(), "n_averaged": self.n_averaged, "start_step": self.start_step,
                "end_step": self.end_step, "sources": list(self.sources)}

    @classmethod
    def from_state(cls, template: nn.Module, state: dict, device=None) -> "AveragedModel":
        averaged = cls(template)
        if device is not None:
            averaged.to(device)
        averaged.module.load_state_dict(state["module"])
        averaged.n_averaged, averaged.start_step, averaged.end_step = (
            state["n_averaged"], state["start_step"], state["end_step"])
        averaged.sources = [tuple(source) for source in state["sources"]]
        return averaged


@torch.no_grad()
def update_bn(model: nn.Module, minibatches, n_steps: int) -> None:
    """Re-estimate BatchNorm statistics of `model` on `n_steps` training minibatches (each a
    sequence of (x, y), one per training domain, concatenated as in training), as SWAD does
    before evaluating an average whose BatchNorm layers are not frozen."""
    inputs = (torch.cat([x for x, _ in batches]) for batches in itertools.islice(minibatches, n_steps))
    torch.optim.swa_utils.update_bn(inputs, model)


class LossValley:
    """SWAD's dense averaging over the valley of the training-domain validation loss (see the
    module docstring for the rule and the quirks `bookkeeping="reference"` keeps).

    Segments are frozen on `device` (the CPU by default, as SWAD) so the queues cost no
    accelerator memory. `log` receives the convergence, death and fallback messages.
    """

    dead_valley = False

    def __init__(self, n_converge: int = 3, n_tolerance: int = 6, tolerance_ratio: float = 0.3,
                 bookkeeping: str = "reference", log=print, device="cpu"):
        if bookkeeping not in BOOKKEEPING:
            raise unknown_choice("swad_kwargs bookkeeping", bookkeeping, BOOKKEEPING)
        self.n_converge = n_converge
        self.n_tolerance = n_tolerance
        self.tolerance_ratio = tolerance_ratio
        self.bookkeeping = bookkeeping
        self.log = log
        self.device = device
        self.converge_Q = deque(maxlen=n_converge)
        self.smooth_Q = deque(maxlen=n_tolerance)
        self.final_model = None
        self.converge_step = None
        self.threshold = None
        self.dead_valley = False
        self._result = None

    @property
    def is_converged(self) -> bool:
        return self.converge_step is not None

    @property
    def _corrected(self) -> bool:
        return self.bookkeeping == "corrected"

    def _smooth_loss(self) -> float:
        return min(segment.end_loss for segment in self.smooth_Q)

    def _add(self, segment, **steps) -> None:
        if not steps:
            steps = {"start_step": segment.start_step, "end_step": segment.end_step}
        self.final_model.update_parameters(segment, **steps)

    def update_and_evaluate(self, segment_model: AveragedModel, val_acc: float, val_loss: float) -> None:
        if self.dead_valley:
            return
        frozen = segment_model.frozen(self.device)
        frozen.end_loss = float(val_loss)
        self.converge_Q.append(frozen)
        self.smooth_Q.append(frozen)

        if not self.is_converged:
            if len(self.converge_Q) == self.n_converge:
                losses = [segment.end_loss for segment in self.converge_Q]
                if int(np.argmin(losses)) == 0:
                    self._converge(np.mean(losses))
            return

        head = self.smooth_Q[0]
        if head.end_step < self.converge_step or (self._corrected and head.end_step <= self.final_model.end_step):
            return
        if self._smooth_loss() > self.threshold:
            self.dead_valley = True
            self.log(f"SWAD: the loss valley is dead at step {self.final_model.end_step}: the minimum loss "
                     f"{self._smooth_loss():.4f} of the last {len(self.smooth_Q)} segments exceeds the "
                     f"threshold {self.threshold:.4f}; training stops")
            return
        self._add(head)

    def _converge(self, mean_loss: float) -> None:
        start = self.converge_Q[0]
        self.converge_step = start.end_step
        self.threshold = float(mean_loss) * (1.0 + self.tolerance_ratio)
        self.final_model = AveragedModel(start)
        later = list(self.converge_Q)[1:1 + max(0, self.n_converge - self.n_tolerance)]
        if self._corrected:
            queued = list(self.smooth_Q)
            position = next((i for i, segment in enumerate(queued) if segment is start), 0)
            earlier = []
            for segment in reversed(queued[:position]):
                if segment.end_loss > self.threshold:
                    break
                earlier.insert(0, segment)
            for segment in [*earlier, start, *later]:
                self._add(segment)
        elif self.n_tolerance < self.n_converge:
            for segment in later:
                self._add(segment)
        elif self.n_tolerance > self.n_converge:
            queued = list(self.smooth_Q)[: self.n_tolerance - self.n_converge + 1]
            start_index = 0
            for index in reversed(range(len(queued))):
                if queued[index].end_loss > self.threshold:
                    start_index = index + 1
                    break
            for segment in queued[start_index + 1:]:
                self._add(segment)
        self.log(f"SWAD: converged at step {self.converge_step}, start step {self.final_model.start_step}, "
                 f"threshold {self.threshold:.6f}")

    def get_final_model(self) -> AveragedModel:
        """The averaged model (drains the queue the first time it is called)."""
        if self._result is not None:
            return self._result
        if not self.is_converged:
            self.log("SWAD: the validation loss never converged; the final model is the average of the "
                     "last segment only")
            self._result = self.converge_Q[-1]
            return self._result
        if not self.dead_valley:
            queue = self.smooth_Q
            if self._corrected:
                while queue and queue[0].end_step <= self.final_model.end_step:
                    queue.popleft()
            else:
                queue.popleft()
            while queue and self._smooth_loss() <= self.threshold:
                segment = queue.popleft()
                if self._corrected:
                    self._add(segment)
                else:
                    self._add(segment, step=segment.end_step)
        self._result = self.final_model
        return self._result

    def state_dict(self) -> dict:
        segments = list(dict.fromkeys([*self.smooth_Q, *self.converge_Q]))
        index = {id(segment): i for i, segment in enumerate(segments)}
        return {
            "segments": [{**s.averaging_state(), "end_loss": s.end_loss} for s in segments],
            "converge_Q": [index[id(s)] for s in self.converge_Q],
            "smooth_Q": [index[id(s)] for s in self.smooth_Q],
            "final_model": None if self.final_model is None else self.final_model.averaging_state(),
            "converge_step": self.converge_step, "threshold": self.threshold, "dead_valley": self.dead_valley,
        }

    def load_state_dict(self, state: dict, template: nn.Module) -> None:
        segments = []
        for saved in state["segments"]:
            segment = AveragedModel.from_state(template, saved, self.device)
            segment.end_loss = saved["end_loss"]
            segments.append(segment)
        self.converge_Q = deque((segments[i] for i in state["converge_Q"]), maxlen=self.n_converge)
        self.smooth_Q = deque((segments[i] for i in state["smooth_Q"]), maxlen=self.n_tolerance)
        self.final_model = (None if state["final_model"] is None
                            else AveragedModel.from_state(template, state["final_model"], self.device))
        self.converge_step, self.threshold, self.dead_valley = (
            state["converge_step"], state["threshold"], state["dead_valley"])
        self._result = None


class IIDMax:
    """SWAD's IIDMax: average from the checkpoint of best training-domain validation accuracy,
    keep the average whose own validation accuracy is best. `evaluate(model)` returns that
    accuracy (the trainer's evaluator's `train_out`)."""

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


class SMA:
    """EoA's simple moving average: every step from `sma_start` on, uniformly. The trainer feeds
    segments that contain only those steps; empty segments (before `sma_start`) are skipped."""

    dead_valley = False

    def __init__(self, sma_start: int = 100, log=print):
        self.sma_start = sma_start
        self.log = log
        self.average = None

    def update_and_evaluate(self, segment_model: AveragedModel, val_acc: float, val_loss: float) -> None:
        if segment_model.n_averaged == 0:
            return
        if self.average is None:
            self.average = AveragedModel(segment_model)
        self.average.merge(segment_model)

    def get_final_model(self) -> AveragedModel | None:
        return self.average

    def state_dict(self) -> dict:
        return {"average": None if self.average is None else self.average.averaging_state()}

    def load_state_dict(self, state: dict, template: nn.Module) -> None:
        self.average = None if state["average"] is None else AveragedModel.from_state(template, state["average"])
