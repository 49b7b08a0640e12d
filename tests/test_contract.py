"""Every registered algorithm against the contract of `domainbed.algorithms.base.Algorithm`, as
the library checks it (domainbed/algorithms/contract.py), and the checks against broken methods.

The tests are parameterised over `algorithms.ALGORITHMS` when pytest collects them, so a new
method is covered by registering it. How a method is built for the checks (`CONTRACT_INPUT`,
`CONTRACT_HPARAMS`) is set on its class.
"""

import functools
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from domainbed import algorithms
from domainbed.algorithms import contract
from domainbed.algorithms.erm import ERM
from domainbed.errors import UsageError

pytestmark = pytest.mark.filterwarnings("ignore:--precision bf16:UserWarning")

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(algorithms.ALGORITHMS)


def _registered_classes_by_module() -> dict:
    """{module of domainbed/algorithms: the Algorithm subclasses it defines, registered or not}."""
    found = {}
    for module_info in pkgutil.iter_modules(algorithms.__path__):
        module = importlib.import_module(f"{algorithms.__name__}.{module_info.name}")
        found[module.__name__] = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                                  if issubclass(cls, algorithms.Algorithm) and cls.__module__ == module.__name__
                                  and cls is not algorithms.Algorithm]
    return found


def test_every_registered_algorithm_is_collected():
    """The parameterisation (`NAMES`, taken at collection, after whatever other test modules
    registered) is exactly the registry of a fresh interpreter, and every `Algorithm` subclass a
    module of domainbed/algorithms/ defines is registered or is the base of a registered one, so a
    method whose decorator was forgotten fails here instead of escaping the contract."""
    fresh = subprocess.run(
        [sys.executable, "-c", "import json; from domainbed import algorithms; print(json.dumps(sorted(algorithms.ALGORITHMS)))"],
        cwd=REPO, capture_output=True, text=True, check=True)
    assert NAMES == json.loads(fresh.stdout) == sorted(algorithms.ALGORITHMS)
    assert {"ERM", "SAM", "RSC", "DMG"} <= set(NAMES)
    registered = set(algorithms.ALGORITHMS.values())
    bases = {base for cls in registered for base in cls.__mro__[1:]}
    for module, classes in _registered_classes_by_module().items():
        unregistered = [cls.__name__ for cls in classes if cls not in registered and cls not in bases]
        assert not unregistered, f"{module} defines unregistered algorithms {unregistered}"


@pytest.mark.parametrize("name", NAMES)
def test_declarations_give_help_and_defaults_in_their_ranges(name):
    assert contract.check_declarations(name) == []


@pytest.mark.parametrize("name", NAMES)
def test_update_returns_finite_scalars_and_changes_the_weights(name):
    assert contract.check_update(contract.subject(name)) == []


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_is_strict_and_continues_bit_identically(name):
    assert contract.check_state_round_trip(contract.subject(name)) == []


def _precision_cases():
    """(name, precision) for every algorithm; fp16 convolutions are slow on CPUs (some 30 s for a
    ResNet-18 step at 32 px), so image-input methods under fp16 are marked slow."""
    for name in NAMES:
        yield pytest.param(name, "bf16", id=f"{name}-bf16")
        images = algorithms.ALGORITHMS[name].CONTRACT_INPUT == "images"
        yield pytest.param(name, "fp16", id=f"{name}-fp16", marks=[pytest.mark.slow] if images else [])


@pytest.mark.parametrize("name, precision_name", list(_precision_cases()))
def test_mixed_precision_runs_and_changes_the_compute_dtype(name, precision_name):
    assert contract.check_mixed_precision(contract.subject(name), precision_name) == []


@pytest.mark.parametrize("name", NAMES)
def test_after_a_quantization_swap_every_trainable_parameter_is_optimized(name):
    assert contract.check_quantization_swap(contract.subject(name)) == []


@pytest.mark.parametrize("name", NAMES)
def test_predict_is_deterministic_in_eval_mode(name):
    assert contract.check_predict_is_deterministic(contract.subject(name)) == []


@pytest.mark.parametrize("name", NAMES)
def test_the_averaged_copy_holds_the_modules_state_only(name):
    assert contract.check_averaged_copy(contract.subject(name)) == []


# Every method on a ViT and on a ResNet, from scratch at 32 px: timm's smallest ViT (6 blocks of 64
# units, the architecture of DeiT, DINOv2, CLIP) and its smallest ResNet. A method that needs a
# hook the backbone lacks (MixStyle's style_sites on a ViT) refuses it in one line naming the hook.
CONTRACT_BACKBONES = {"vit": "timm:test_vit", "resnet": "timm:test_resnet"}
HOOKS = ("feature_map", "mask_sites", "style_sites", "stage_sites")


def _on_backbone(check, name, backbone):
    try:
        return check(contract.subject(name, CONTRACT_BACKBONES[backbone]))
    except UsageError as refusal:
        message = str(refusal)
        assert "\n" not in message and any(hook in message for hook in HOOKS), message
        pytest.skip(f"{name} refuses the {backbone}: {message}")


@pytest.mark.parametrize("backbone", list(CONTRACT_BACKBONES))
@pytest.mark.parametrize("name", NAMES)
def test_every_method_updates_on_a_vit_and_a_resnet(name, backbone):
    assert _on_backbone(contract.check_update, name, backbone) == []


@pytest.mark.parametrize("name", NAMES)
def test_every_method_quantizes_a_vits_linear_layers(name):
    """QT-DoG's ViT rows: every Linear layer of the ViT swapped, step sizes learned."""
    assert _on_backbone(contract.check_quantization_swap, name, "vit") == []


def test_only_hook_refusals_are_skipped_on_the_vit():
    refusing = []
    for name in NAMES:
        try:
            contract.subject(name, CONTRACT_BACKBONES["vit"]).build()
        except UsageError:
            refusing.append(name)
    assert {"Mixstyle", "Mixstyle2"} <= set(refusing)
    assert "ERM" not in refusing and "RSC" not in refusing and "DMG" not in refusing


# Broken methods, built in this process without being registered (a registration would leak
# into other tests' registries): each check names the defect in one line.

class ReturnsAGraph(ERM):
    """Returns its loss with the autograd graph attached (kept alive until the trainer reads it)
    and a per-sample vector, beside a NaN."""

    def update(self, minibatches):
        x, y = torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])
        losses = F.cross_entropy(self.predict(x), y, reduction="none")
        self.optimizer.zero_grad()
        self.backward(losses.mean())
        self.optimizer_step(self.optimizer)
        return {"loss": losses.mean(), "per_sample": losses.detach(), "penalty": torch.tensor(float("nan"))}


class KeepsAConstantInAnAttribute(ERM):
    """Its predict needs a tensor that is neither a parameter nor a buffer."""

    def __init__(self, *args):
        super().__init__(*args)
        self.prior = torch.zeros(contract.NUM_CLASSES)

    def predict(self, x, env=None):
        return super().predict(x) + self.prior


class KeepsScratchInAClosure(ERM):
    """Holds a tensor where a copy cannot tell it is scratch (a bound argument of a partial)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.scale = functools.partial(torch.mul, torch.ones(()))


class ForgetsTheHead(ERM):
    def __init__(self, *args):
        super().__init__(*args)
        self.optimizer = self.new_optimizer(self.featurizer.parameters())


class CountsInAnAttribute(ERM):
    """Counts its updates in a plain attribute, which no state dict carries."""

    def __init__(self, *args):
        super().__init__(*args)
        self.updates = 0

    def update(self, minibatches):
        self.updates += 1
        with torch.no_grad():
            self.classifier.weight.mul_(1 + 0.1 * self.updates)
        return super().update(minibatches)


class RemembersCheckpointsInAnAttribute(ERM):
    """Ends training at its second checkpoint, counted in a plain attribute."""

    def __init__(self, *args):
        super().__init__(*args)
        self.checkpoints = 0

    def on_checkpoint(self, step, validation):
        self.checkpoints += 1
        return self.checkpoints == 2


class AnswersNone(ERM):
    def on_checkpoint(self, step, validation):
        return None


class SamplesInEval(ERM):
    def predict(self, x, env=None):
        return super().predict(x) + torch.randn(len(x), 1)


class StepsBesideTheHooks(ERM):
    def update(self, minibatches):
        x, y = torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.predict(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}


def _broken(algorithm_class):
    return contract.Subject(algorithm_class.__name__, algorithm_class, contract.subject("ERM").hparams)


def _one_line_each(defects):
    assert defects and all("\n" not in defect for defect in defects)
    return defects


def test_update_defects_are_named():
    defects = _one_line_each(contract.check_update(_broken(ReturnsAGraph)))
    assert len(defects) == 3
    for defect, key in zip(defects[:2], ("loss", "per_sample")):
        assert defect.startswith(f"ReturnsAGraph.update returned {{'{key}': tensor(")
        assert defect.endswith(": every value must be a python float or a detached 0-dim floating-point tensor")
    assert defects[2] == "ReturnsAGraph.update returned {'penalty': nan}: every value must be finite"
    assert contract.check_update(_broken(ERM)) == []  # ERM returns a detached tensor
    defects = _one_line_each(contract.check_update(_broken(ForgetsTheHead)))
    assert defects == [f"parameter classifier.{p} is in no optimizer of ForgetsTheHead.optimizers(); valid: exactly one"
                       for p in ("weight", "bias")]
    assert contract.check_finite_floats(_broken(ERM), 0.5) == [
        "ERM.update returned 0.5: it must be a dict with at least 'loss'"]
    assert contract.check_update(_broken(AnswersNone)) == ["AnswersNone.on_checkpoint returned None; valid: True or False"]
    (defect,) = _one_line_each(contract.check_state_round_trip(_broken(RemembersCheckpointsInAnAttribute)))
    assert defect.startswith("after a state round trip RemembersCheckpointsInAnAttribute.on_checkpoint returned False, "
                             "not True: state that changes at checkpoints")


def test_state_and_predict_defects_are_named():
    stats, weights, optimizer = _one_line_each(contract.check_state_round_trip(_broken(CountsInAnAttribute)))
    assert stats.startswith("after a state round trip CountsInAnAttribute.update returned {'loss': ")
    assert weights.startswith("after a state round trip and one more update CountsInAnAttribute's copy differs in "
                              "featurizer.input.weight, ")
    assert weights.endswith("state that changes in training must be a buffer or go through get_extra_state()")
    assert optimizer == ("after a state round trip and one more update CountsInAnAttribute's optimizer 'optimizer' "
                         "differs in exp_avg, exp_avg_sq")
    defects = _one_line_each(contract.check_predict_is_deterministic(_broken(SamplesInEval)))
    assert defects[0] == "SamplesInEval.predict(x, env=None) differs between two calls in eval mode"


def test_averaged_copy_defects_are_named():
    (defect,) = _one_line_each(contract.check_averaged_copy(_broken(KeepsScratchInAClosure)))
    assert defect.startswith("the averaged copy of KeepsScratchInAClosure holds 1 tensors besides its parameters "
                             "and buffers (shapes ())")
    (defect,) = _one_line_each(contract.check_averaged_copy(_broken(KeepsAConstantInAnAttribute)))
    assert defect.startswith("the averaged copy of KeepsAConstantInAnAttribute cannot predict: TypeError: ")
    assert defect.endswith("(a tensor predict needs must be a parameter or a buffer)")


def test_a_method_that_bypasses_the_loss_scaling_hooks_is_refused_under_fp16():
    assert contract.check_mixed_precision(_broken(StepsBesideTheHooks), "bf16") == []
    (defect,) = _one_line_each(contract.check_mixed_precision(_broken(StepsBesideTheHooks), "fp16"))
    assert defect.startswith("StepsBesideTheHooks under fp16: --precision fp16 needs loss scaling, but "
                             "StepsBesideTheHooks.update calls backward() directly")


def test_every_method_that_claims_data_parallelism_steps_as_one_process_on_the_whole_batch():
    """Two Gloo processes, each on its half of every domain's minibatch, end two updates where one
    process on the whole minibatches does, to fp32 rounding, for every method that declares
    DATA_PARALLEL (one spawn for all); a method that claims it wrongly is named in one line."""
    claiming = [name for name in NAMES if algorithms.ALGORITHMS[name].data_parallel()]
    assert {"ERM", "SAM", "SAGM_DG", "GradSurgery", "CORAL", "VREx"} <= set(claiming)
    broken = "data_parallel_examples:PerShareRisksVREx"
    defects = contract.check_data_parallel([*claiming, broken])
    assert {name: found for name, found in defects.items() if name != broken} == {name: [] for name in claiming}
    (defect,) = _one_line_each(defects[broken])
    assert defect.startswith(f"{broken} on 2 processes differs after 2 updates from one process on the whole batch "
                             "in featurizer.")
    assert defect.endswith("valid: DATA_PARALLEL False, or whole-batch quantities through distributed.global_mean / "
                           "all_gather")
