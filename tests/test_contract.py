"""Every registered algorithm against the contract of `domainbed.algorithms.base.Algorithm`.

The tests are parameterised over `algorithms.ALGORITHMS` when pytest collects them, so a new
method is covered by registering it. Methods run on DomainBed's MLP over (8,) inputs unless
`IMAGE_INPUT` names them (methods that act on feature maps or backbone stages); those run on a
ResNet-18 from scratch at 32 px.
"""

import copy
import importlib
import json
import math
import pkgutil
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from domainbed import algorithms, hparams_registry
from domainbed.training.precision import Precision
from domainbed.quant import quantize_model

pytestmark = pytest.mark.filterwarnings("ignore:--precision bf16:UserWarning")

REPO = Path(__file__).resolve().parents[1]
MLP_INPUT = (8,)
IMAGE_SHAPE = (3, 32, 32)
# methods that need a spatial backbone; every other registered name runs on the MLP
IMAGE_INPUT = {"Mixstyle", "Mixstyle2", "CutMix", "ARM"}
NUM_CLASSES, NUM_DOMAINS, BATCH = 3, 2, 8
UPDATES_TO_FIND_THE_SCALE = 24
# DomainBed's defaults that train nothing on a fresh network, replaced by a value its random
# search draws: SAND-mask's tau 1.0 makes tanh(k (a - tau)) <= 0 for every agreement a <= 1,
# so every gradient is masked to zero
CONTRACT_HPARAMS = {"SANDMask": {"tau": 0.5}}
NAMES = sorted(algorithms.ALGORITHMS)


def _input_shape(name):
    return IMAGE_SHAPE if name in IMAGE_INPUT else MLP_INPUT


def _build(name, seed=0):
    hparams = hparams_registry.default_hparams(name, "Synthetic")
    hparams.update(mlp_width=16, mlp_depth=3, backbone="resnet18", pretrained=False, **CONTRACT_HPARAMS.get(name, {}))
    torch.manual_seed(seed)
    algorithm = algorithms.get_algorithm_class(name)(_input_shape(name), NUM_CLASSES, NUM_DOMAINS, hparams)
    algorithm.train()
    return algorithm


def _minibatches(name, seed=0):
    generator = torch.Generator().manual_seed(1000 + seed)
    shape = _input_shape(name)
    return [(torch.randn(BATCH, *shape, generator=generator), torch.randint(NUM_CLASSES, (BATCH,), generator=generator))
            for _ in range(NUM_DOMAINS)]


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _update(algorithm, name, step, n_steps=10):
    algorithm.on_step_begin(step, n_steps)
    _seed_everything(step)
    return algorithm.update(_minibatches(name, step))


def _trainable(algorithm):
    return {id(p): (n, p) for n, p in algorithm.named_parameters() if p.requires_grad}


def _snapshot(algorithm):
    return {n: p.detach().clone() for n, p in algorithm.named_parameters()}


def _changed(before, algorithm):
    return [n for n, p in algorithm.named_parameters() if n in before and not torch.equal(before[n], p.detach())]


def _optimized_counts(algorithm):
    counts = {}
    for optimizer in algorithm.optimizers().values():
        for group in optimizer.param_groups:
            for p in group["params"]:
                counts[id(p)] = counts.get(id(p), 0) + 1
    return counts


def _assert_every_trainable_parameter_in_one_optimizer(algorithm):
    counts = _optimized_counts(algorithm)
    trainable = _trainable(algorithm)
    missing = [n for i, (n, _) in trainable.items() if i not in counts]
    repeated = [n for i, (n, _) in trainable.items() if counts.get(i, 0) > 1]
    assert not missing, f"trainable parameters in no optimizer: {missing}"
    assert not repeated, f"parameters in more than one param group: {repeated}"


def _assert_finite_floats(stats):
    assert isinstance(stats, dict) and "loss" in stats
    for key, value in stats.items():
        assert type(value) is float, f"{key} is {type(value).__name__}, not a python float"
        assert math.isfinite(value), f"{key} = {value}"


def test_every_registered_algorithm_is_collected():
    """The parameterisation below (`NAMES`, taken at collection, after whatever other test modules
    registered) is exactly the registry of a fresh interpreter, and every `Algorithm` subclass a
    module of domainbed/algorithms/ defines is registered or is the base of a registered one, so a
    method whose decorator was forgotten fails here instead of escaping the contract. An
    `IMAGE_INPUT` or `CONTRACT_HPARAMS` entry naming no algorithm fails too."""
    fresh = subprocess.run(
        [sys.executable, "-c", "import json; from domainbed import algorithms; print(json.dumps(sorted(algorithms.ALGORITHMS)))"],
        cwd=REPO, capture_output=True, text=True, check=True)
    assert NAMES == json.loads(fresh.stdout)
    assert {"ERM", "SAM", "RSC", "DMG"} <= set(NAMES)
    registered = set(algorithms.ALGORITHMS.values())
    bases = {base for cls in registered for base in cls.__mro__[1:]}
    for module_info in pkgutil.iter_modules(algorithms.__path__):
        module = importlib.import_module(f"{algorithms.__name__}.{module_info.name}")
        defined = [value for value in vars(module).values() if isinstance(value, type)
                   and issubclass(value, algorithms.Algorithm) and value.__module__ == module.__name__]
        unregistered = [cls.__name__ for cls in defined if cls not in registered and cls not in bases]
        assert not unregistered, f"{module.__name__} defines unregistered algorithms {unregistered}"
    stale = (IMAGE_INPUT | set(CONTRACT_HPARAMS)) - set(NAMES)
    assert not stale, f"IMAGE_INPUT or CONTRACT_HPARAMS name unregistered algorithms: {stale}"


@pytest.mark.parametrize("name", NAMES)
def test_update_returns_finite_floats_and_changes_the_weights(name):
    algorithm = _build(name)
    _assert_every_trainable_parameter_in_one_optimizer(algorithm)
    before = _snapshot(algorithm)
    _assert_finite_floats(_update(algorithm, name, 0))
    assert _changed(before, algorithm), f"{name}.update changed no parameter"


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_is_strict_and_continues_bit_identically(name):
    algorithm = _build(name)
    _update(algorithm, name, 0)
    copy_ = _build(name, seed=1)  # other initial weights: everything must come from the state
    copy_.load_state_dict(copy.deepcopy(algorithm.state_dict()), strict=True)
    assert set(copy_.optimizers()) == set(algorithm.optimizers())
    for key, optimizer in algorithm.optimizers().items():
        copy_.optimizers()[key].load_state_dict(copy.deepcopy(optimizer.state_dict()))
    stats, stats_copy = _update(algorithm, name, 1), _update(copy_, name, 1)
    assert stats == stats_copy
    state, state_copy = algorithm.state_dict(), copy_.state_dict()
    assert state.keys() == state_copy.keys()
    different = [k for k in state if torch.is_tensor(state[k]) and not torch.equal(state[k], state_copy[k])]
    assert not different, f"after one more update the copy differs in {different[:5]}"
    for key, optimizer in algorithm.optimizers().items():
        for p_state, q_state in zip(optimizer.state_dict()["state"].values(),
                                    copy_.optimizers()[key].state_dict()["state"].values()):
            for field in p_state:
                a, b = p_state[field], q_state[field]
                assert torch.equal(a, b) if torch.is_tensor(a) else a == b, f"optimizer {key}: {field}"


def _compute_dtypes(algorithm):
    """dtypes of the outputs of every Linear and Conv2d layer, recorded by forward hooks."""
    seen = set()
    for module in algorithm.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.register_forward_hook(lambda m, args, output: seen.add(output.dtype))
    return seen


def _precision_cases():
    """(name, precision, dtype) for every algorithm; fp16 convolutions are slow on CPUs (some
    30 s for a ResNet-18 step at 32 px), so image-input methods under fp16 are marked slow."""
    for name in NAMES:
        yield pytest.param(name, "bf16", torch.bfloat16, id=f"{name}-bf16")
        marks = [pytest.mark.slow] if name in IMAGE_INPUT else []
        yield pytest.param(name, "fp16", torch.float16, id=f"{name}-fp16", marks=marks)


@pytest.mark.parametrize("name, precision_name, dtype", list(_precision_cases()))
def test_mixed_precision_runs_and_changes_the_compute_dtype(name, precision_name, dtype):
    algorithm = _build(name)
    precision = Precision(precision_name, "cpu")
    precision.attach(algorithm)
    seen = _compute_dtypes(algorithm)
    before = _snapshot(algorithm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # the first fp16 steps may be skipped while GradScaler halves its scale from 2^16 to one
        # that fits (IGA's penalty weight 1000 overflows for a dozen steps)
        for step in range(UPDATES_TO_FIND_THE_SCALE):
            with precision.training_step(algorithm):  # refuses a method that bypasses the hooks
                stats = _update(algorithm, name, step)
            _assert_finite_floats(stats)
            if _changed(before, algorithm):
                break
    assert dtype in seen, f"{name} under {precision_name}: layers computed in {seen}"
    assert _changed(before, algorithm), f"{name} under {precision_name} changed no parameter in {UPDATES_TO_FIND_THE_SCALE} updates"
    assert all(p.dtype == torch.float32 for p in algorithm.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_after_a_quantization_swap_every_trainable_parameter_is_optimized(name):
    algorithm = _build(name)
    _update(algorithm, name, 0)
    # the QT-DoG extension's path (domainbed/quant/extension.py)
    layers = quantize_model(algorithm, 8, q_linear=True)
    assert layers
    left_out = algorithm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
    assert left_out == []
    _assert_every_trainable_parameter_in_one_optimizer(algorithm)
    steps = {n: m.step_size.detach().clone() for n, m in layers.items()}
    before = _snapshot(algorithm)
    _assert_finite_floats(_update(algorithm, name, 1))
    assert _changed(before, algorithm)
    assert any(not torch.equal(s, layers[n].step_size) for n, s in steps.items()), "no step size learned"


@pytest.mark.parametrize("name", NAMES)
def test_predict_is_deterministic_in_eval_mode(name):
    algorithm = _build(name)
    _update(algorithm, name, 0)
    algorithm.eval()
    x = _minibatches(name, 5)[0][0]
    with torch.no_grad():
        for env in (None, 0, NUM_DOMAINS - 1):
            torch.manual_seed(env or 0)
            first = algorithm.predict(x, env=env)
            torch.manual_seed(123)
            second = algorithm.predict(x, env=env)
            assert first.shape == (BATCH, NUM_CLASSES)
            assert torch.equal(first, second), f"{name}.predict(env={env}) differs between two calls"
