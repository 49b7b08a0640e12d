"""A training step never makes the host wait for the device.

On a GPU the host queues a step's kernels ahead of the device; any read of a device tensor on
the host (`.item()`, `float()`, `bool()`, `.tolist()`), a tensor built from python numbers on the
device (`torch.tensor(list, device=cuda)`, a blocking copy), a data-dependent shape (`nonzero`,
boolean indexing) or a blocking host-to-device copy makes the host wait until the queue has
drained, and the device idles while the host queues the next kernels.

On CUDA, `torch.cuda.set_sync_debug_mode("error")` turns every such wait into an error; the
tests marked `cuda` run the trainer's step (`domainbed.training.trainer.train_step`: the gpu
pipeline's batch, the extensions' hooks, the update under the precision) that way. On the CPU
nothing waits, so `HostSyncWatch` stands in for the debug mode: a torch function mode that
follows which tensors would live on the device (the model's parameters and buffers, the inputs,
the pipeline's resident caches, and whatever is computed from them or created with an explicit
device) and records every call that would wait for one of them. Tensors a method deliberately
keeps on the host (the augmentation's parameters drawn from a CPU generator, RSC's coin flip with
`device="cpu"`, Adam's step counts) are host tensors there too, so using them waits for nothing.
"""

import itertools
import math
import warnings

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from domainbed.algorithms import ALGORITHMS, contract, get_algorithm_class
from domainbed.data.gpu_augment import DeviceConstant, normalize
from domainbed.data.gpu_pipeline import GpuPipeline
from domainbed.datasets import get_dataset_class, split_dataset
from domainbed.hparams.config import run_hparams
from domainbed.training.extensions import build_extensions
from domainbed.training.precision import Precision
from domainbed.training.trainer import Fold, FoldSettings, train_step

# the methods of the GPU path the issue names; QT-DoG is ERM with the quantization extension
METHODS = {"ERM": {}, "SAGM_DG": {}, "GradSurgery": {}, "RSC": {}, "DMG": {},
           "QT-DoG": {"quant": "True", "q_steps": "0", "q_linear": "True"}}
# reads of a device tensor on the host, and data-dependent output shapes
READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__complex__", "numpy", "cpu",
         "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "equal", "allclose",
         "is_nonzero", "__format__", "__repr__", "__str__"}
FROM_NUMBERS = {"tensor", "as_tensor", "asarray"}


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _names_a_device(value) -> bool:
    """A device given as an object (or a tensor's `.device`), not the literal "cpu" that code
    writes where it means the host."""
    return isinstance(value, torch.device) or (isinstance(value, str) and value != "cpu")


class HostSyncWatch(TorchFunctionMode):
    """Records (as `waits`) the torch calls that would make the host wait for a CUDA device."""

    def __init__(self):
        super().__init__()
        self.waits = []
        self._device = {}  # id -> tensor: the tensors that would live on the device

    def mark(self, *values) -> None:
        for tensor in _tensors(list(values)):
            self._device[id(tensor)] = tensor

    def mark_module(self, module: nn.Module) -> None:
        self.mark(list(module.parameters()), list(module.buffers()))

    def on_device(self, value) -> bool:
        return any(id(t) in self._device for t in _tensors(value))

    def _wait(self, func, why: str) -> None:
        self.waits.append(f"{getattr(func, '__qualname__', func)}: {why}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        targets = [*args[1:], kwargs.get("device")] if name in ("to", "cuda") else []
        to_device = name == "cuda" or any(_names_a_device(a) or self.on_device(a) for a in targets)
        to_host = name == "cpu" or "cpu" in [a for a in targets if isinstance(a, str)]
        non_blocking = kwargs.get("non_blocking", False)
        if name in READS and args and self.on_device(args[0]):
            self._wait(func, "reads a device tensor on the host")
        elif name in ("__getitem__", "__setitem__") and self.on_device(args[0]):
            if any(t.dtype == torch.bool or not self.on_device(t) for t in _tensors(args[1])):
                self._wait(func, "indexes a device tensor with a boolean mask or a host index")
        elif name in FROM_NUMBERS and _names_a_device(kwargs.get("device")) and not self.on_device(args[:1]):
            self._wait(func, "builds a device tensor from host data with a blocking copy")
        elif name in ("to", "cuda") and self.on_device(args[0]) and to_host:
            self._wait(func, "copies a device tensor to the host")
        elif name in ("to", "cuda") and not self.on_device(args[0]) and to_device and not non_blocking:
            self._wait(func, "copies a host tensor to the device with a blocking copy")
        elif name == "copy_" and self.on_device(args[0]) != self.on_device(args[1:2]) and not non_blocking:
            self._wait(func, "copies between host and device with a blocking copy")
        elif name == "repeat_interleave" and self.on_device(args[1:2]) and "output_size" not in kwargs:
            self._wait(func, "repeats by device counts without output_size")
        out = func(*args, **kwargs)
        computed_on_device = (self.on_device(args) or self.on_device(kwargs)) and not to_host
        if computed_on_device or to_device or _names_a_device(kwargs.get("device")):
            self.mark(out)
        return out


def _watched(run, watch: HostSyncWatch):
    with watch:
        run()
    return watch.waits


# --- the watch itself --------------------------------------------------------------------


def test_the_watch_flags_what_waits_for_the_device_and_nothing_else():
    weight = torch.randn(3)
    watch = HostSyncWatch()
    watch.mark(weight)
    with watch:
        loss = (weight * 2).sum()
        drawn = torch.rand(4)  # the host's own numbers
        assert float(drawn.sum()) >= 0 and drawn.nonzero().numel() >= 0 and drawn.tolist()
        assert float(torch.rand((), device="cpu")) >= 0  # RSC's coin flip
        on_device = torch.zeros(3, device=weight.device) + drawn[:3].to(weight.device, non_blocking=True)
        assert watch.waits == [] and watch.on_device(on_device) and watch.on_device(weight > 0)
        loss.item()
        bool(loss > 0)
        math.isfinite(loss)
        weight.tolist()
        weight[weight > 0]
        torch.tensor([1.0, 2.0], device=weight.device)
        drawn.to(weight.device)
        weight.cpu()
    assert [wait.split(": ", 1)[1] for wait in watch.waits] == ["reads a device tensor on the host"] * 4 + [
        "indexes a device tensor with a boolean mask or a host index",
        "builds a device tensor from host data with a blocking copy",
        "copies a host tensor to the device with a blocking copy",
        "reads a device tensor on the host"], watch.waits


def test_normalising_with_python_lists_waits_and_with_device_constants_does_not():
    """What torchvision's normalize does with a list mean and std (the gpu pipeline before), and
    what the pipeline does now."""
    import torchvision.transforms.v2.functional as TF

    images = torch.rand(2, 3, 4, 4)
    mean, std = DeviceConstant([0.5, 0.4, 0.3]), DeviceConstant([0.2, 0.3, 0.4])
    watch = HostSyncWatch()
    watch.mark(images)
    assert _watched(lambda: normalize(images, mean, std), watch) == []  # the constants' one copy, non-blocking
    assert _watched(lambda: normalize(images, mean, std), watch) == []
    watch = HostSyncWatch()
    watch.mark(images)
    waits = _watched(lambda: TF.normalize(images, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]), watch)
    assert len(waits) == 2 and all("blocking copy" in wait for wait in waits)
    torch.testing.assert_close(normalize(images, mean, std), TF.normalize(images, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]),
                               rtol=0, atol=0)


# --- a training step ---------------------------------------------------------------------


def _hparams(method: str, precision: str, device: str, overrides=()) -> dict:
    algorithm = "ERM" if method == "QT-DoG" else method
    pairs = [("precision", precision), ("pipeline", "gpu"), ("device", device), ("num_workers", "0"),
             *METHODS[method].items(), *overrides]
    return run_hparams(algorithm, "Synthetic", overrides=[(k, v) for k, v in pairs if k != "device"])


def _fold(method, precision_name, device, input_shape, train_minibatches, overrides=()):
    hparams = _hparams(method, precision_name, device, overrides)
    algorithm_name = "ERM" if method == "QT-DoG" else method
    if len(input_shape) == 1:
        hparams.update(contract.SMALL_NETWORK)
    algorithm = get_algorithm_class(algorithm_name)(input_shape, 3, 2, hparams).to(device)
    if torch.device(device).type == "cuda":
        algorithm = algorithm.to(memory_format=torch.channels_last)
    precision = Precision(precision_name, device)
    precision.attach(algorithm)
    settings = FoldSettings(algorithm=algorithm_name, test_envs=[0], n_steps=10, checkpoint_freq=5, device=device)
    fold = Fold(settings, hparams, None, algorithm, None, train_minibatches, torch.device(device), lambda line: None)
    extensions = build_extensions(hparams)
    for extension in extensions:
        extension.setup(fold)
    return fold, extensions, precision


def _feature_batches(device="cpu"):
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 8, generator=generator).to(device), torch.randint(3, (6,), generator=generator).to(device))
               for _ in range(2)]
    return batches, itertools.repeat(batches)


@pytest.mark.parametrize("precision_name", ["bf16", "fp16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_a_training_step_calls_nothing_that_would_wait_for_the_device(method, precision_name):
    batches, stream = _feature_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bf16 emulated on this CPU
        fold, extensions, precision = _fold(method, precision_name, "cpu", (8,), stream)
        watch = HostSyncWatch()
        watch.mark(batches)
        watch.mark_module(fold.algorithm)
        for extension in extensions:
            for value in vars(extension).values():
                if isinstance(value, nn.Module):
                    watch.mark_module(value)
        with watch:  # the first step initialises lazily (optimizer state, the loss scale): followed, not judged
            train_step(fold, extensions, precision, 0)
        watch.waits.clear()
        watch.mark_module(fold.algorithm)  # QT-DoG's step sizes, created at step 0
        with watch:
            stats = [train_step(fold, extensions, precision, step) for step in (1, 2)]
    assert watch.waits == [], watch.waits
    assert all(torch.is_tensor(stats[-1][key]) for key in stats[-1])
    assert math.isfinite(stats[-1]["loss"])


@pytest.fixture(scope="module")
def image_dataset(image_root):
    """test_gpu_pipeline's JPEG folders, as the gpu pipeline reads them."""
    hparams = dict(image_size=32, data_augmentation=True, cache_dir="", num_workers=0, pipeline="gpu")
    return get_dataset_class("ImageFolder")(str(image_root), [], hparams), hparams


def _pipeline(dataset, hparams, device):
    pipeline = GpuPipeline(dataset, hparams, device)
    splits = [split_dataset(environment, 2, seed=i)[1] for i, environment in enumerate(dataset)]
    return pipeline, splits


def test_the_gpu_pipeline_augments_and_evaluates_without_waiting_for_the_device(image_dataset):
    dataset, hparams = image_dataset
    pipeline, splits = _pipeline(dataset, hparams, "cpu")
    batches = pipeline.train_minibatches(splits[:2], [1, 2], 4)
    evaluation = pipeline.eval_batches(splits, 4)
    next(batches), list(evaluation)  # builds the caches
    watch = HostSyncWatch()
    for source in pipeline._sources.values():
        watch.mark(source.inputs, source.labels)
    with watch:  # the constants' first copy to the device: followed, not judged
        next(batches), list(evaluation)
    watch.waits.clear()
    with watch:
        minibatches = next(batches)
        evaluated = list(evaluation)
    assert watch.waits == [], watch.waits
    assert len(minibatches) == 2 and minibatches[0][0].shape == (4, 3, 32, 32)
    assert len(evaluated) == len(evaluation)


# --- on CUDA -------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("precision_name", ["bf16", "fp16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_on_cuda_a_training_step_with_the_gpu_pipeline_never_synchronises(method, precision_name, image_dataset):
    if precision_name == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16 arithmetic")
    dataset, hparams = image_dataset
    pipeline, splits = _pipeline(dataset, {**hparams, "image_size": 32}, "cuda")
    stream = pipeline.train_minibatches(splits[:2], [1, 2], 4)  # the two training domains _fold builds for
    fold, extensions, precision = _fold(method, precision_name, "cuda", dataset.input_shape, stream,
                                        overrides=[("backbone", "resnet18"), ("pretrained", "False"),
                                                   ("image_size", "32"), ("resnet_dropout", "0.0")])
    train_step(fold, extensions, precision, 0)  # lazy initialisations may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in (1, 2):
            stats = train_step(fold, extensions, precision, step)
        evaluated = list(pipeline.eval_batches(splits, 8))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(stats["loss"]) and evaluated


@pytest.mark.parametrize("name", sorted(name for name, cls in ALGORITHMS.items() if cls.__module__.startswith("domainbed.")))
def test_every_method_returns_its_loss_as_a_device_tensor(name):
    """The trainer reads an update's stats on the host only every tb_freq steps: a method that
    returns its loss as a python number has read it itself (`.item()`, `.tolist()`), a wait in
    every step. (Numbers the host already holds, such as a learning rate, may stay numbers.)"""
    subject = contract.subject(name)
    stats = subject.build().update(subject.minibatches())
    assert torch.is_tensor(stats["loss"]), type(stats["loss"])
