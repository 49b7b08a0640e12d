"""The algorithm contract (the docstring of `domainbed.algorithms.base.Algorithm`) as checks
that any method, inside the repository or outside it, can be run through.

Each `check_*` function returns the defects it found, one plain-words line each (an empty list:
the method keeps that part of the contract). Exceptions that the method itself raises propagate,
so a test shows their traceback; `run_contract` turns them into defect lines as well, for
`python -m domainbed.scripts.check_method`. tests/test_contract.py runs every registered name
through the same functions.

A check builds the method from a `Subject`: its class and the hparams it is built with, which are
the method's defaults on the Synthetic dataset with a small network (an MLP of width 16 on (8,)
inputs, or a ResNet-18 from scratch at 32 px when the class sets `CONTRACT_INPUT = "images"`)
and the class's `CONTRACT_HPARAMS` on top. `subject(name, backbone)` builds it on 32 px images
with that backbone from scratch instead, so the checks run every method on a ViT and on a CNN.
"""

import copy
import datetime
import gc
import math
import random
import tempfile
import types
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from domainbed import distributed, hparams_registry
from domainbed.algorithms.registry import get_algorithm_class
from domainbed.averaging.averaged_model import AveragedModel
from domainbed.errors import UsageError, first_line
from domainbed.hparams.checks import check_hparams
from domainbed.hparams.config import coerce
from domainbed.hparams.declare import DeclarationError
from domainbed.quant import quantize_model
from domainbed.training.precision import Precision

INPUT_SHAPES = {"features": (8,), "images": (3, 32, 32)}
NUM_CLASSES, NUM_DOMAINS, BATCH = 3, 2, 8
SMALL_NETWORK = {"mlp_width": 16, "mlp_depth": 3, "backbone": "resnet18", "pretrained": False}
# datasets whose declarations are checked: DomainBed's small-image, MNIST and image-folder kinds
DECLARATION_DATASETS = ("Synthetic", "RotatedMNIST", "PACS", "DomainNet")
# GradScaler starts at 2^16 and halves on every overflowing step; a method with a large penalty
# weight (IGA's 1000) skips a dozen steps before its scale fits
UPDATES_TO_FIND_THE_SCALE = 24
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
# what two evaluations hand `on_checkpoint`: the training domains' held-out accuracy and loss
VALIDATION = ({"train_out": 0.5, "tr_outloss": 1.0}, {"train_out": 0.4, "tr_outloss": 1.2})
# the data-parallel check: Gloo processes on the CPU, each updating on its share of BATCH rows
DATA_PARALLEL_PROCESSES, DATA_PARALLEL_STEPS = 2, 2
# three training domains: with two, GradSurgery's outlier rule compares two equal norms, which
# rounding decides (on one process as on two)
DATA_PARALLEL_DOMAINS = 3
# fp32 rounding: the shares' gradients are summed in another order than the whole batch's, and
# Adam's first steps divide by the gradients' magnitude
DATA_PARALLEL_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


@dataclass(frozen=True)
class Subject:
    """What the checks build: `algorithm_class` under the name `name`, with `hparams`."""

    name: str
    algorithm_class: type
    hparams: dict
    input_kind: str = ""  # a key of INPUT_SHAPES; empty: the class's CONTRACT_INPUT
    num_domains: int = NUM_DOMAINS

    @property
    def input_shape(self) -> tuple:
        return INPUT_SHAPES[self.input_kind or self.algorithm_class.CONTRACT_INPUT]

    def build(self, seed: int = 0):
        """A fresh instance in train mode, its weights drawn from `seed`."""
        torch.manual_seed(seed)
        algorithm = self.algorithm_class(self.input_shape, NUM_CLASSES, self.num_domains, copy.deepcopy(self.hparams))
        algorithm.train()
        return algorithm

    def minibatches(self, seed: int = 0) -> list:
        generator = torch.Generator().manual_seed(1000 + seed)
        return [(torch.randn(BATCH, *self.input_shape, generator=generator),
                 torch.randint(NUM_CLASSES, (BATCH,), generator=generator)) for _ in range(self.num_domains)]

    def update(self, algorithm, step: int, n_steps: int = 10) -> dict:
        """`algorithm.update` as the trainer calls it at `step`, with every RNG seeded by `step`
        (on this process's share of the minibatches under data parallelism)."""
        algorithm.on_step_begin(step, n_steps)
        random.seed(step)
        np.random.seed(step)
        torch.manual_seed(step)
        return algorithm.update(distributed.shard(self.minibatches(step)))


def subject(name: str, backbone: str | None = None) -> Subject:
    """The `Subject` of a registered name or a `package.module:Class` path; with `backbone`, on
    images through that backbone (from scratch)."""
    algorithm_class = get_algorithm_class(name)
    name = algorithm_class.NAME  # a path registers the class under a name hparams_registry knows
    if algorithm_class.CONTRACT_INPUT not in INPUT_SHAPES:
        raise UsageError(f"{name}.CONTRACT_INPUT {algorithm_class.CONTRACT_INPUT!r} is unknown; valid: "
                         + ", ".join(INPUT_SHAPES))
    hparams = hparams_registry.default_hparams(name, "Synthetic")
    hparams.update(SMALL_NETWORK, **algorithm_class.CONTRACT_HPARAMS)
    if backbone is not None:
        return Subject(name, algorithm_class, {**hparams, "backbone": backbone}, "images")
    return Subject(name, algorithm_class, hparams)


def _one_line(value, limit: int = 80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _snapshot(algorithm) -> dict:
    return {n: p.detach().clone() for n, p in algorithm.named_parameters()}


def _changed(before: dict, algorithm) -> list:
    return [n for n, p in algorithm.named_parameters() if n in before and not torch.equal(before[n], p.detach())]


def check_declarations(name: str, datasets=DECLARATION_DATASETS) -> list:
    """`declare_hparams` runs for each of `datasets`, gives every new hparam one line of help, and
    its defaults lie in their own valid ranges; `own_run_settings` names run settings only, with
    values in their ranges; `CONTRACT_INPUT` is known and `CONTRACT_HPARAMS` names declared
    hparams only."""
    algorithm_class = get_algorithm_class(name)
    name = algorithm_class.NAME
    if algorithm_class.CONTRACT_INPUT not in INPUT_SHAPES:
        return [f"{name}.CONTRACT_INPUT {algorithm_class.CONTRACT_INPUT!r} is unknown; valid: {', '.join(INPUT_SHAPES)}"]
    defects = []
    for dataset in datasets:
        try:
            declared = hparams_registry.declarations(name, dataset, run=False)
        except DeclarationError as error:
            return [str(error)]
        except Exception as error:  # a broken declare_hparams is the method's defect, in one line
            return [f"{name}.declare_hparams(hparam, {dataset!r}) raised {first_line(error, with_type=True)}"]
        defects += [f"{name} declares hparam {key!r} with a help of several lines; valid: one line"
                    for key, hparam in declared.items() if "\n" in hparam.help and hparam.owner == name]
        try:
            check_hparams(name, dataset, {key: hparam.default for key, hparam in declared.items()})
        except UsageError as error:
            defects.append(f"{name}'s default on {dataset}: {error}")
        try:
            own = hparams_registry.own_run_settings(name, dataset)
        except DeclarationError as error:
            return [str(error)]
        run_defaults = hparams_registry.run_setting_defaults(name, dataset)
        try:
            check_hparams(name, dataset, {key: coerce(key, value, run_defaults[key], f"{name}.own_run_settings")
                                          for key, value in own.items()})
        except UsageError as error:
            defects.append(f"{name}'s own run settings on {dataset}: {error}")
        unknown = sorted(set(algorithm_class.CONTRACT_HPARAMS) - set(declared))
        if unknown:
            defects.append(f"{name}.CONTRACT_HPARAMS names {', '.join(unknown)}, which no declaration of {name} "
                           "declares")
        if defects:
            return sorted(set(defects))
    return []


def _is_scalar(value) -> bool:
    """A python float, or a detached 0-dim floating-point tensor (what the trainer reads later)."""
    if torch.is_tensor(value):
        return value.dim() == 0 and value.is_floating_point() and not value.requires_grad
    return type(value) is float


def check_finite_floats(subject_: Subject, stats) -> list:
    """`update`'s result: a dict with `loss` whose values are finite scalars: python floats or
    detached 0-dim floating-point tensors."""
    name = subject_.name
    if not isinstance(stats, dict) or "loss" not in stats:
        return [f"{name}.update returned {_one_line(stats)}: it must be a dict with at least 'loss'"]
    defects = []
    for key, value in stats.items():
        if not _is_scalar(value):
            defects.append(f"{name}.update returned {{{key!r}: {_one_line(value)}}}: every value must be a "
                           "python float or a detached 0-dim floating-point tensor")
        elif not math.isfinite(value):
            defects.append(f"{name}.update returned {{{key!r}: {float(value)}}}: every value must be finite")
    return defects


def check_every_trainable_parameter_in_one_optimizer(subject_: Subject, algorithm) -> list:
    """Every trainable parameter of `algorithm` is in exactly one param group of `optimizers()`."""
    counts = {}
    for optimizer in algorithm.optimizers().values():
        for group in optimizer.param_groups:
            for p in group["params"]:
                counts[id(p)] = counts.get(id(p), 0) + 1
    defects = []
    for parameter_name, p in algorithm.named_parameters():
        if not p.requires_grad or counts.get(id(p), 0) == 1:
            continue
        where = "no optimizer" if id(p) not in counts else f"{counts[id(p)]} param groups"
        defects.append(f"parameter {parameter_name} is in {where} of {subject_.name}.optimizers(); valid: "
                       "exactly one")
    return defects


def check_update(subject_: Subject) -> list:
    """One update returns finite scalars (with `loss`) and changes the weights; then
    `on_checkpoint` answers True or False."""
    algorithm = subject_.build()
    defects = check_every_trainable_parameter_in_one_optimizer(subject_, algorithm)
    before = _snapshot(algorithm)
    defects += check_finite_floats(subject_, subject_.update(algorithm, 0))
    if not _changed(before, algorithm):
        defects.append(f"{subject_.name}.update changed no parameter")
    answer = algorithm.on_checkpoint(0, dict(VALIDATION[0]))
    if not isinstance(answer, bool):
        defects.append(f"{subject_.name}.on_checkpoint returned {_one_line(answer)}; valid: True or False")
    return defects


def check_state_round_trip(subject_: Subject) -> list:
    """A fresh instance loaded (strictly) with the state and optimizer states continues
    bit-identically for the same minibatches, RNG state and checkpoints' validation."""
    name = subject_.name
    algorithm = subject_.build()
    subject_.update(algorithm, 0)
    algorithm.on_checkpoint(0, dict(VALIDATION[0]))
    copy_ = subject_.build(seed=1)  # other initial weights: everything must come from the state
    try:
        copy_.load_state_dict(copy.deepcopy(algorithm.state_dict()), strict=True)
    except RuntimeError as error:
        return [f"{name}.load_state_dict(state_dict(), strict=True) fails on a fresh instance: {first_line(error, with_type=True)}"]
    if set(copy_.optimizers()) != set(algorithm.optimizers()):
        return [f"{name}.optimizers() names {sorted(copy_.optimizers())} on a fresh instance, "
                f"{sorted(algorithm.optimizers())} after an update; valid: the same names"]
    for key, optimizer in algorithm.optimizers().items():
        copy_.optimizers()[key].load_state_dict(copy.deepcopy(optimizer.state_dict()))
    stats, stats_copy = subject_.update(algorithm, 1), subject_.update(copy_, 1)
    defects = []
    if stats != stats_copy:
        defects.append(f"after a state round trip {name}.update returned {_one_line(stats_copy)}, "
                       f"not {_one_line(stats)}")
    answer, answer_copy = (a.on_checkpoint(1, dict(VALIDATION[1])) for a in (algorithm, copy_))
    if answer != answer_copy:
        defects.append(f"after a state round trip {name}.on_checkpoint returned {answer_copy}, not {answer}: state "
                       "that changes at checkpoints must be a buffer or go through get_extra_state()")
    state, state_copy = algorithm.state_dict(), copy_.state_dict()
    if state.keys() != state_copy.keys():
        return defects + [f"after one more update {name}.state_dict() has other keys on the copy"]
    different = [k for k in state if torch.is_tensor(state[k]) and not torch.equal(state[k], state_copy[k])]
    if different:
        defects.append(f"after a state round trip and one more update {name}'s copy differs in "
                       f"{', '.join(different[:5])}: state that changes in training must be a buffer or go "
                       "through get_extra_state()")
    for key, optimizer in algorithm.optimizers().items():
        for p_state, q_state in zip(optimizer.state_dict()["state"].values(),
                                    copy_.optimizers()[key].state_dict()["state"].values()):
            fields = [f for f in p_state if not (torch.equal(p_state[f], q_state[f]) if torch.is_tensor(p_state[f])
                                                 else p_state[f] == q_state[f])]
            if fields:
                defects.append(f"after a state round trip and one more update {name}'s optimizer {key!r} differs "
                               f"in {', '.join(fields)}")
                break
    return defects


def _record_compute_dtypes(algorithm) -> set:
    """The dtypes of the outputs of every Linear and Conv2d layer, filled in by forward hooks."""
    seen = set()
    for module in algorithm.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.register_forward_hook(lambda m, args, output: seen.add(output.dtype))
    return seen


def check_mixed_precision(subject_: Subject, precision_name: str) -> list:
    """Under `precision_name` (bf16, fp16) the layers compute in that dtype, updates return finite
    scalars and change the weights within a few steps, and parameters stay float32."""
    name, dtype = subject_.name, PRECISIONS[precision_name]
    algorithm = subject_.build()
    precision = Precision(precision_name, "cpu")
    precision.attach(algorithm)
    seen = _record_compute_dtypes(algorithm)
    before = _snapshot(algorithm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for step in range(UPDATES_TO_FIND_THE_SCALE):
            try:
                with precision.training_step(algorithm):  # refuses a method that bypasses the hooks
                    stats = subject_.update(algorithm, step)
            except UsageError as error:
                return [f"{name} under {precision_name}: {error}"]
            defects = check_finite_floats(subject_, stats)
            if defects:
                return [f"under {precision_name}: {defect}" for defect in defects]
            if _changed(before, algorithm):
                break
    defects = []
    if dtype not in seen:
        defects.append(f"{name} under {precision_name}: its layers computed in {sorted(map(str, seen))}, "
                       f"not {dtype}")
    if not _changed(before, algorithm):
        defects.append(f"{name} under {precision_name} changed no parameter in {UPDATES_TO_FIND_THE_SCALE} updates")
    defects += [f"{name} under {precision_name}: parameter {n} is {p.dtype}; valid: torch.float32"
                for n, p in algorithm.named_parameters() if p.dtype != torch.float32]
    return defects


def check_quantization_swap(subject_: Subject) -> list:
    """After `quantize_model` swaps every Conv2d/Linear (the QT-DoG extension's path), the step
    sizes join their weights' optimizers, every trainable parameter is optimized once, and an
    update still returns finite scalars, changes the weights and learns step sizes."""
    name = subject_.name
    algorithm = subject_.build()
    subject_.update(algorithm, 0)
    layers = quantize_model(algorithm, 8, q_linear=True)
    if not layers:
        return [f"{name} has no Conv2d or Linear layer for quantize_model to swap"]
    left_out = algorithm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
    defects = [f"{name}.add_parameters_to_optimizers left {len(left_out)} step sizes in no optimizer"] if left_out else []
    defects += check_every_trainable_parameter_in_one_optimizer(subject_, algorithm)
    steps = {n: m.step_size.detach().clone() for n, m in layers.items()}
    before = _snapshot(algorithm)
    defects += [f"after a quantization swap: {defect}" for defect in check_finite_floats(subject_,
                                                                                         subject_.update(algorithm, 1))]
    if not _changed(before, algorithm):
        defects.append(f"after a quantization swap {name}.update changed no parameter")
    if all(torch.equal(s, layers[n].step_size) for n, s in steps.items()):
        defects.append(f"after a quantization swap {name}.update learned no step size")
    return defects


def check_predict_is_deterministic(subject_: Subject) -> list:
    """In eval mode `predict(x, env)` gives (BATCH, NUM_CLASSES) logits, the same on every call
    whatever the RNG state, for an unseen domain and for training domains."""
    name = subject_.name
    algorithm = subject_.build()
    subject_.update(algorithm, 0)
    algorithm.eval()
    x = subject_.minibatches(5)[0][0]
    defects = []
    with torch.no_grad():
        for env in (None, 0, NUM_DOMAINS - 1):
            torch.manual_seed(env or 0)
            first = algorithm.predict(x, env=env)
            torch.manual_seed(123)
            second = algorithm.predict(x, env=env)
            if tuple(first.shape) != (BATCH, NUM_CLASSES):
                defects.append(f"{name}.predict(x, env={env}) has shape {tuple(first.shape)}; valid: "
                               f"{(BATCH, NUM_CLASSES)} for {BATCH} inputs and {NUM_CLASSES} classes")
            elif not torch.equal(first, second):
                defects.append(f"{name}.predict(x, env={env}) differs between two calls in eval mode")
    return defects


def _reachable_tensors(root) -> list:
    """Every tensor reachable from `root` through the garbage collector's references (objects,
    containers, closures), stopping at tensors, functions' code and globals, classes and python
    modules."""
    stop = (types.FunctionType, types.BuiltinFunctionType, types.ModuleType, types.CodeType, type)
    found, seen, todo = [], set(), [root]
    while todo:
        value = todo.pop()
        if id(value) in seen or isinstance(value, stop):
            continue
        seen.add(id(value))
        if torch.is_tensor(value):
            found.append(value)
            continue
        todo.extend(gc.get_referents(value))
    return found


def check_averaged_copy(subject_: Subject) -> list:
    """The copy weight averaging keeps of the method (every SWAD segment is one) after an update
    holds its parameters and buffers and no other tensor (no optimizer state, gradient or scratch
    memory), and predicts as the method does."""
    name = subject_.name
    algorithm = subject_.build()
    subject_.update(algorithm, 0)
    averaged = AveragedModel(algorithm)
    state = {id(t) for t in [*averaged.parameters(), *averaged.buffers()]}
    others = [t for t in _reachable_tensors(averaged) if id(t) not in state]
    defects = []
    if others:
        shapes = ", ".join(str(tuple(t.shape)) for t in others[:5])
        defects.append(f"the averaged copy of {name} holds {len(others)} tensors besides its parameters and "
                       f"buffers (shapes {shapes}): a tensor predict needs is a parameter or buffer; scratch state is "
                       "left out of the copy only when held in a plain attribute")
    with_grad = [n for n, p in averaged.named_parameters() if p.grad is not None]
    if with_grad:
        defects.append(f"the averaged copy of {name} holds gradients of {', '.join(with_grad[:5])}")
    algorithm.eval()
    averaged.eval()
    x = subject_.minibatches(5)[0][0]
    with torch.no_grad():
        for env in (None, 0):
            try:
                same = torch.equal(algorithm.predict(x, env=env), averaged.predict(x, env=env))
            except Exception as error:  # a plain attribute predict needs is None in the copy
                return defects + [f"the averaged copy of {name} cannot predict: {first_line(error, with_type=True)} "
                                  "(a tensor predict needs must be a parameter or a buffer)"]
            if not same:
                defects.append(f"the averaged copy of {name} predicts otherwise than {name} (env={env})")
    return defects


def _state_after_steps(subject_: Subject) -> dict:
    """The floating-point tensors of the state dict (parameters, buffers such as GroupDRO's q)
    after DATA_PARALLEL_STEPS updates, on this process's share of every minibatch."""
    subject_ = replace(subject_, num_domains=DATA_PARALLEL_DOMAINS)
    algorithm = subject_.build()
    for step in range(DATA_PARALLEL_STEPS):
        subject_.update(algorithm, step)
    return {key: value.detach().clone() for key, value in algorithm.state_dict().items()
            if torch.is_tensor(value) and value.is_floating_point()}


def _data_parallel_process(rank: int, processes: int, init_file: str, names: list, out_path: str) -> None:
    """One Gloo process of `check_data_parallel`: rank 0 saves every method's state, or the first
    line of what it raised."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=processes,
                            timeout=datetime.timedelta(seconds=120))
    try:
        states = {}
        for name in names:
            try:
                states[name] = _state_after_steps(subject(name))
            except Exception as error:  # the method's defect, in one line
                states[name] = f"{name} raised {first_line(error, with_type=True)} on {processes} processes"
        if rank == 0:
            torch.save(states, out_path)
    finally:
        dist.destroy_process_group()


def check_data_parallel(names, processes: int = DATA_PARALLEL_PROCESSES) -> dict:
    """{name: defects}: `processes` Gloo processes on the CPU, each updating on its share of every
    domain's minibatch (domainbed/distributed.py), end DATA_PARALLEL_STEPS updates in the state
    that one process reaches on the whole minibatches, to fp32 rounding. All names run in one
    spawn of the processes (registered names or `package.module:Class` paths)."""
    names = list(names)
    with tempfile.TemporaryDirectory() as folder:
        out_path = Path(folder) / "states.pt"
        torch.multiprocessing.spawn(_data_parallel_process, nprocs=processes,
                                    args=(processes, str(Path(folder) / "init"), names, str(out_path)))
        shared = torch.load(out_path, weights_only=True)
    defects = {}
    for name in names:
        if isinstance(shared[name], str):
            defects[name] = [shared[name]]
            continue
        alone = _state_after_steps(subject(name))
        differ = [key for key in alone if not torch.allclose(shared[name][key], alone[key], **DATA_PARALLEL_TOLERANCE)]
        defects[name] = [] if not differ else [
            f"{name} on {processes} processes differs after {DATA_PARALLEL_STEPS} updates from one process on the "
            f"whole batch in {', '.join(differ[:5])} (largest difference "
            f"{max(float((shared[name][k] - alone[k]).abs().max()) for k in differ):.3g}); valid: DATA_PARALLEL "
            "False, or whole-batch quantities through distributed.global_mean / all_gather"]
    return defects


def contract_checks(subject_: Subject) -> dict:
    """{what is checked: a function of no arguments returning its defects}, in the order to run."""
    checks = {
        "update": lambda: check_update(subject_),
        "state round trip": lambda: check_state_round_trip(subject_),
        "predict in eval mode": lambda: check_predict_is_deterministic(subject_),
        "quantization swap": lambda: check_quantization_swap(subject_),
        "averaged copy": lambda: check_averaged_copy(subject_),
    }
    for precision_name in PRECISIONS:
        checks[precision_name] = lambda precision_name=precision_name: check_mixed_precision(subject_, precision_name)
    return checks


def run_contract(name: str) -> tuple:
    """(the parts of the contract checked, the defects found) for a registered name or a
    `package.module:Class` path; an exception the method raises is one defect line."""
    defects = check_declarations(name)
    if defects:
        return ["hparam declarations"], defects  # nothing can be built from broken declarations
    subject_ = subject(name)
    checked = ["hparam declarations"]
    checks = contract_checks(subject_)
    if subject_.algorithm_class.data_parallel():
        checks["data parallel"] = lambda: check_data_parallel([name])[name]
    for what, check in checks.items():
        checked.append(what)
        try:
            defects += check()
        except Exception as error:
            defects.append(f"{subject_.name} ({what}) raised {first_line(error, with_type=True)}")
    return checked, defects
