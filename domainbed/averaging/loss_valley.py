"""SWAD's LossValley: dense averaging over the valley of the training-domain validation loss
(Cha et al., "SWAD: Domain Generalization by Seeking Flat Minima", NeurIPS 2021).

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
A validation loss or threshold that is NaN or infinite raises `NonFiniteNumberError`: a valley
of NaN would "converge" at once (NaN is never above the threshold) and average broken weights.

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
"""

from collections import deque

import numpy as np
import torch.nn as nn

from domainbed.averaging.averaged_model import AveragedModel
from domainbed.errors import unknown_choice
from domainbed.training.finite_numbers import require_finite

BOOKKEEPING = ("reference", "corrected")


class LossValley:
    """SWAD's dense averaging over the valley of the training-domain validation loss (see the
    module docstring for the rule and the quirks `bookkeeping="reference"` keeps).

    Segments are frozen on `device` (the CPU by default, as SWAD) so the queues cost no
    accelerator memory. `log` receives the convergence, death and fallback messages.
    """

    dead_valley = False

    def __init__(self, n_converge: int, n_tolerance: int, tolerance_ratio: float,
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
        require_finite({"validation loss": val_loss}, f"SWAD: the segment ending at step {segment_model.end_step}",
                       "no loss valley can be found on it: lower the lr or check the inputs")
        frozen = segment_model.frozen(self.device)
        frozen.end_loss = float(val_loss)
        self.converge_Q.append(frozen)
        self.smooth_Q.append(frozen)

        if not self.is_converged:
            if len(self.converge_Q) == self.n_converge:
                losses = [segment.end_loss for segment in self.converge_Q]
                if int(np.argmin(losses)) == 0:
                    with np.errstate(over="ignore"):  # an overflow is _converge's one-line error, not a warning
                        mean_loss = np.mean(losses)
                    self._converge(mean_loss)
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
        require_finite({"threshold": self.threshold}, f"SWAD: convergence at step {self.converge_step}",
                       f"the mean of the validation losses {[s.end_loss for s in self.converge_Q]} times "
                       f"{1.0 + self.tolerance_ratio} overflows: lower the lr or check the inputs")
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
