"""Mixed precision: autocast around updates and evaluation, fp16 loss scaling through the
Algorithm hooks, float32 state for the SAM family, and --compile."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from domainbed import algorithms, hparams_registry
from domainbed.algorithms.base import Algorithm
from domainbed.training.compiling import compile_featurizer
from domainbed.errors import UsageError
from domainbed.training.precision import Precision, check_precision, fuse, native_cpu_bf16

pytestmark = pytest.mark.filterwarnings("ignore:--precision bf16:UserWarning")

FAST = ["--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "4", "--checkpoint_freq", "2",
        "--batch_size", "8", "--test_envs", "0"]


def _records(result):
    return [json.loads(line) for line in (result["out_dir"] / "results.jsonl").read_text().splitlines()]


def _build(name, input_shape=(16,)):
    hparams = hparams_registry.default_hparams(name, "Synthetic")
    return algorithms.get_algorithm_class(name)(input_shape, 3, 2, hparams)


def _minibatches(seed=0, input_shape=(16,)):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, *input_shape, generator=generator), torch.randint(3, (6,), generator=generator))
            for _ in range(2)]


def _assert_an_inf_input_skips_the_step(algorithm, precision):
    frozen = [p.detach().clone() for p in algorithm.parameters()]
    minibatches = _minibatches(2)
    minibatches[0][0][0, 0] = float("inf")
    with precision.training_step(algorithm):
        algorithm.update(minibatches)
    assert all(torch.equal(a, b) for a, b in zip(frozen, algorithm.parameters()))


def test_bf16_runs_end_to_end_on_the_cpu(run_train_all):
    records = _records(run_train_all("bf16", *FAST, "--precision", "bf16"))
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["tr_outloss"]) for r in records)


def test_bf16_autocasts_the_forward_and_keeps_float32_state():
    algorithm = _build("ERM")
    precision = Precision("bf16", "cpu")
    precision.attach(algorithm)
    seen = []
    algorithm.classifier.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with precision.training_step(algorithm):
        algorithm.update(_minibatches())
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in algorithm.parameters())
    state = algorithm.optimizer.state_dict()["state"]
    assert state and all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")


def test_fp16_scales_the_loss_and_skips_steps_with_inf_gradients():
    algorithm = _build("ERM")
    precision = Precision("fp16", "cpu")
    precision.attach(algorithm)
    scaler = precision.loss_scaler.scaler
    initial_scale = scaler.get_scale()
    before = [p.detach().clone() for p in algorithm.parameters()]
    with precision.training_step(algorithm):
        algorithm.update(_minibatches())
    assert any(not torch.equal(a, b) for a, b in zip(before, algorithm.parameters()))
    assert scaler.get_scale() == initial_scale  # growth only after 2000 clean steps

    # gradients reach the optimizer unscaled: one fp16 step equals the fp32 step up to fp16 rounding
    reference = _build("ERM")
    reference.load_state_dict(algorithm.state_dict())
    reference.optimizer.load_state_dict(algorithm.optimizer.state_dict())
    with precision.training_step(algorithm):
        algorithm.update(_minibatches(1))
    reference.update(_minibatches(1))
    for p, q in zip(algorithm.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=2e-3, rtol=0)

    # an inf loss: the step is skipped and the scale halves
    _assert_an_inf_input_skips_the_step(algorithm, precision)
    assert scaler.get_scale() == initial_scale / 2

    restored = Precision("fp16", "cpu")
    restored.load_state_dict(precision.state_dict())
    assert restored.loss_scaler.scaler.get_scale() == initial_scale / 2


class _DirectBackward(Algorithm):
    """A method that steps without the hooks."""

    def __init__(self):
        super().__init__((4,), 2, 1, {})
        self.linear = torch.nn.Linear(4, 2)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=0.1)

    def update(self, minibatches):
        x, y = minibatches[0]
        loss = F.cross_entropy(self.linear(x), y)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}


def test_fp16_refuses_methods_that_bypass_the_hooks():
    algorithm = _DirectBackward()
    precision = Precision("fp16", "cpu")
    precision.attach(algorithm)
    with pytest.raises(UsageError, match=r"_DirectBackward.update calls backward\(\) directly.*bf16"):
        with precision.training_step(algorithm):
            algorithm.update([(torch.randn(3, 4), torch.tensor([0, 1, 0]))])
    for name in ("fp32", "bf16"):
        precision = Precision(name, "cpu")
        precision.attach(algorithm)
        with precision.training_step(algorithm):
            algorithm.update([(torch.randn(3, 4), torch.tensor([0, 1, 0]))])


@pytest.mark.parametrize("name", ["SAM", "GSAM", "SAGM_DG"])
def test_sam_family_under_fp16_perturbs_with_the_unscaled_gradient_and_skips_on_inf(name):
    algorithm = _build(name)
    precision = Precision("fp16", "cpu")
    precision.attach(algorithm)
    scaler = precision.loss_scaler.scaler
    initial_scale = scaler.get_scale()
    reference = _build(name)
    reference.load_state_dict(algorithm.state_dict())
    reference.optimizer.load_state_dict(algorithm.optimizer.state_dict())
    with precision.training_step(algorithm):
        algorithm.update(_minibatches())
    reference.update(_minibatches())
    # SAGM's alpha term and GSAM's combination would see g 65536 times too large if not unscaled
    for p, q in zip(algorithm.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=2e-3, rtol=0)
    assert scaler.get_scale() == initial_scale

    _assert_an_inf_input_skips_the_step(algorithm, precision)
    assert scaler.get_scale() == initial_scale / 2
    assert not algorithm.perturbation.state  # no half-step left behind


def test_bf16_on_a_cpu_without_bf16_units_warns():
    if native_cpu_bf16() is not False:
        pytest.skip("this CPU has bf16 units (or torch cannot tell)")
    with pytest.warns(UserWarning, match="emulated and slower than fp32"):
        Precision("bf16", "cpu")


def test_unknown_precision_names_the_valid_ones():
    with pytest.raises(UsageError, match="unknown precision 'fp8'; valid: fp32, bf16, fp16"):
        Precision("fp8", "cpu")


@pytest.mark.parametrize("name", ["SAM", "SAGM_DG"])
def test_sam_family_state_stays_float32_under_bf16(name, monkeypatch):
    algorithm = _build(name)
    precision = Precision("bf16", "cpu")
    precision.attach(algorithm)
    perturbation = algorithm.perturbation
    captured = {}
    second_step = perturbation.second_step

    def inspect_then_step(*args, **kwargs):
        captured["state"] = {key: value.dtype for state in perturbation.state.values() for key, value in state.items()}
        captured["grads"] = {p.grad.dtype for group in perturbation.param_groups for p in group["params"]
                             if p.grad is not None}
        return second_step(*args, **kwargs)

    monkeypatch.setattr(perturbation, "second_step", inspect_then_step)
    with precision.training_step(algorithm):
        stats = algorithm.update(_minibatches())
    assert math.isfinite(stats["loss"])
    assert set(captured["state"].values()) == {torch.float32} and set(captured["state"]) == {"g", "e"}
    assert captured["grads"] == {torch.float32}
    assert all(p.dtype == torch.float32 for p in algorithm.parameters())
    state = algorithm.optimizer.state_dict()["state"]
    assert all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")


def test_quantized_layers_train_under_bf16_with_float32_step_sizes():
    quant = pytest.importorskip("domainbed.quant")
    algorithm = _build("ERM", (3, 28, 28))
    layers = quant.quantize_model(algorithm.network, 4)
    steps = [layer.step_size for layer in layers.values()]
    algorithm.add_parameters_to_optimizers([(layer.step_size, layer.weight) for layer in layers.values()])
    before = [step.detach().clone() for step in steps]
    precision = Precision("bf16", "cpu")
    precision.attach(algorithm)
    with precision.training_step(algorithm):
        stats = algorithm.update(_minibatches(input_shape=(3, 28, 28)))
    assert math.isfinite(stats["loss"])
    assert all(step.dtype == torch.float32 and torch.isfinite(step).all() for step in steps)
    assert any(not torch.equal(a, b) for a, b in zip(before, steps))  # the step sizes learn
    assert all(p.dtype == torch.float32 for p in algorithm.parameters())


def test_compile_needs_a_featurizer():
    with pytest.raises(UsageError, match="has none; drop --compile"):
        compile_featurizer(_DirectBackward())


@pytest.mark.slow
def test_compile_runs_end_to_end_and_keeps_state_dict_keys(run_train_all):
    algorithm = _build("ERM")
    keys = list(algorithm.state_dict())
    compile_featurizer(algorithm)
    assert list(algorithm.state_dict()) == keys
    records = _records(run_train_all("compiled", *FAST, "--compile", "--pipeline", "gpu"))
    assert all(math.isfinite(r["loss"]) for r in records)


def _pretend_cuda(monkeypatch, capability, name="Tesla V100-SXM2-16GB"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_bf16_on_a_gpu_without_bf16_arithmetic_is_one_line_suggesting_fp16(monkeypatch):
    _pretend_cuda(monkeypatch, (7, 0))
    with pytest.raises(UsageError, match=r"^--precision bf16: Tesla V100-SXM2-16GB \(compute capability 7.0\) has no "
                                         r"bf16 arithmetic, which needs 8.0 \(Ampere\) or newer; use --precision fp16 "):
        check_precision("bf16", "cuda")
    check_precision("fp16", "cuda")
    check_precision("bf16", "cpu")
    _pretend_cuda(monkeypatch, (8, 0), "NVIDIA A100")
    check_precision("bf16", "cuda:0")


def test_bf16_on_a_gpu_without_it_stops_before_the_run_directory_exists(monkeypatch, tmp_path, capsys):
    import train_all

    _pretend_cuda(monkeypatch, (7, 5), "Tesla T4")
    code = train_all.main(["t4", *FAST, "--device", "cuda", "--precision", "bf16", "--output_dir", str(tmp_path / "out")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Tesla T4 (compute capability 7.5) has no bf16 arithmetic" in line and "fp16" in line
    assert not (tmp_path / "out").exists()


def test_fp16_steps_with_fused_optimizers_that_gradscaler_tells_about_overflows():
    algorithm = _build("DMG")
    Precision("fp16", "cpu").attach(algorithm)
    assert all(group["fused"] for optimizer in algorithm.optimizers().values() for group in optimizer.param_groups)
    assert all(optimizer._step_supports_amp_scaling for optimizer in algorithm.optimizers().values())
    plain = _build("DMG")
    Precision("bf16", "cpu").attach(plain)
    assert not any(group["fused"] for optimizer in plain.optimizers().values() for group in optimizer.param_groups)
    stepped = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
    stepped.param_groups[0]["params"][0].grad = torch.ones(2)
    stepped.step()
    assert not fuse(stepped)  # its state was built for the other kernel


def test_fp16_unscale_answers_on_the_device():
    algorithm = _build("SAGM_DG")
    precision = Precision("fp16", "cpu")
    precision.attach(algorithm)
    with precision.autocast():
        loss = F.cross_entropy(algorithm.predict(torch.randn(4, 16)), torch.tensor([0, 1, 2, 0]))
    algorithm.optimizer.zero_grad()
    algorithm.backward(loss)
    finite = algorithm.unscale_gradients(algorithm.optimizer)
    assert torch.is_tensor(finite) and finite.dtype == torch.bool and finite.dim() == 0 and bool(finite)
    assert _build("SAGM_DG").unscale_gradients(algorithm.optimizer) is True  # no scaler: nothing to do


@pytest.mark.parametrize("name", ["SAM", "SAGM_DG"])
def test_sam_family_under_fp16_leaves_weights_and_adam_alone_when_the_first_gradient_overflows(name):
    algorithm = _build(name)
    precision = Precision("fp16", "cpu")
    precision.attach(algorithm)
    with precision.training_step(algorithm):
        algorithm.update(_minibatches())
    def adam_state():
        return {(id(p), k): v.clone() for p, s in algorithm.optimizer.state.items() for k, v in s.items()}

    before = adam_state()
    _assert_an_inf_input_skips_the_step(algorithm, precision)
    after = adam_state()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fp16_resumes_an_optimizer_state_written_with_the_other_kernels():
    written = _build("ERM")
    written.update(_minibatches())  # plain Adam: its step counts live on the host
    algorithm = _build("ERM")
    precision = Precision("fp16", "cpu")
    precision.attach(algorithm)
    algorithm.optimizer.load_state_dict(written.optimizer.state_dict())
    before = [p.detach().clone() for p in algorithm.parameters()]
    with precision.training_step(algorithm):
        algorithm.update(_minibatches(1))
    assert any(not torch.equal(a, b) for a, b in zip(before, algorithm.parameters()))
