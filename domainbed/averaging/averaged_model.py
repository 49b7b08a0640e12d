"""The running uniform average of a model's weights, the unit every averager is built from.

It differs from SWAD's swa_utils.AveragedModel where it costs time or memory, not in what it
computes: n_averaged is a python int (SWAD's is a device tensor, a host synchronisation per step),
the update is one fused foreach lerp, avg.lerp_(w, 1 / (n + 1)), where SWAD loops over the
parameters computing avg + (w - avg) / (n + 1) (equal up to float rounding; about 3x faster on the
CPU: no temporary), and the copy holds the parameters and buffers that prediction uses only, where
SWAD's deep copy also copies the algorithm's optimizers, gradients and scratch memory into every
segment; an algorithm's training-only parts (`Algorithm.TRAINING_ONLY`: MIRO's frozen pretrained
featurizer and variance encoders), which `predict` never uses, are left out instead of averaged.
"""

import copy

import torch
import torch.nn as nn

from domainbed.training_only import training_only_parts

# what nn.Module itself keeps in an instance's __dict__ (parameters, buffers, submodules, hooks)
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_LEAVES = (str, bytes, int, float, complex, bool, type(None), type, torch.device, torch.dtype)


def _holds_other_tensors(value, state: set, seen: set) -> bool:
    """Whether `value` is, or holds (in containers and object attributes, not in functions or
    nn.Modules of the model), a tensor whose id is not in `state`."""
    if id(value) in seen or isinstance(value, _LEAVES) or callable(value) and not isinstance(value, nn.Module):
        return False
    seen.add(id(value))
    if torch.is_tensor(value):
        return id(value) not in state
    if isinstance(value, dict):
        return any(_holds_other_tensors(v, state, seen) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_other_tensors(v, state, seen) for v in value)
    return any(_holds_other_tensors(v, state, seen) for v in getattr(value, "__dict__", {}).values())


def scratch_of(model: nn.Module) -> list:
    """The objects in plain attributes of `model`'s modules that are not its state: optimizers,
    and anything holding a tensor that is no parameter or buffer of `model` (caches, scratch
    memory such as GradSurgery's layout). Submodules, parameter lists and settings are state."""
    modules = list(model.modules())
    state = {id(t) for t in [*model.parameters(), *model.buffers()]} | {id(m) for m in modules}
    found = []
    for module in modules:
        for name, value in vars(module).items():
            if name in _MODULE_INTERNALS or id(value) in state:
                continue
            if isinstance(value, torch.optim.Optimizer) or _holds_other_tensors(value, state, set()):
                found.append(value)
    return found


def state_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` holding the parameters and buffers that prediction uses: every
    attribute that `scratch_of` names, and every training-only part, is None in the copy (torch
    copies a Parameter without its gradient). The averaged model never steps, so this is all it
    needs, and a copy of Adam's state or of a method's scratch memory would cost every SWAD segment
    as much again (and stay on the GPU when a segment is frozen to the CPU, which moves parameters
    and buffers only)."""
    left_out = [*scratch_of(model), *training_only_parts(model).values()]
    return copy.deepcopy(model, memo={id(value): None for value in left_out})


def prediction_parameters(model: nn.Module, params=None) -> list:
    """`params` (default: `model.parameters()`) without those of `model`'s training-only parts:
    the parameters of `state_copy(model)`, in the same order."""
    params = model.parameters() if params is None else params
    left_out = {id(p) for part in training_only_parts(model).values() for p in part.parameters()}
    return [p for p in params if id(p) not in left_out]


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
        self.module = state_copy(source)
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
        current = [p.detach() for p in prediction_parameters(source, params)]
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

