"""QT-DoG's pieces in isolation: the LSQ quantizer against an independent reference, module
swapping, the optimizer hook, the compact checkpoint, and the combination baselines (CORAL,
MixStyle, DeiT-Small)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import algorithms, hparams_registry
from domainbed.runs import model_io
from domainbed.hparams.config import build_hparams
from domainbed.errors import UsageError
from domainbed.quant import QuantConv2d, QuantLinear, quantize_model
from domainbed.quant.compact import (expand_state, load_compact, model_size_mb, pack_codes, save_compact,
                                     unpack_codes)
from domainbed.quant.extension import make_quantization

BITS = list(range(2, 9))


# ---------------------------------------------------------------- an independent LSQ reference

def ref_range(bits):
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def ref_init_step(w, bits):
    _, q_p = ref_range(bits)
    per_channel = torch.stack([w[c].abs().mean() for c in range(w.shape[0])])
    return (2 * per_channel / math.sqrt(q_p)).view(-1, *([1] * (w.dim() - 1)))


def ref_quantize(w, s, bits):
    q_n, q_p = ref_range(bits)
    return torch.round(torch.clamp(w / s, -q_n, q_p)) * s


def ref_grads(w, s, bits, upstream):
    """LSQ's eq. 3 and the straight-through estimator, written out case by case."""
    q_n, q_p = ref_range(bits)
    v = w / s
    inside = (v > -q_n) & (v < q_p)
    grad_w = upstream * inside
    d_s = torch.where(inside, torch.round(v) - v, torch.where(v <= -q_n, torch.full_like(v, -q_n),
                                                               torch.full_like(v, q_p)))
    g = 1 / math.sqrt(w.numel() * q_p)
    grad_s = (upstream * d_s * g).flatten(1).sum(1).view_as(s)
    return grad_w, grad_s


def _layer(kind, seed):
    torch.manual_seed(seed)
    return nn.Conv2d(4, 6, 3, padding=1) if kind == "conv" else nn.Linear(10, 6)


def _input(kind):
    return torch.randn(5, 4, 7, 7) if kind == "conv" else torch.randn(5, 10)


def _float_forward(layer, x, weight):
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding)
    return F.linear(x, weight, layer.bias)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("bits", BITS)
def test_lsq_matches_reference(kind, bits):
    layer = _layer(kind, bits)
    reference = copy.deepcopy(layer)
    quant = (QuantConv2d if kind == "conv" else QuantLinear).from_float(layer, bits)
    torch.testing.assert_close(quant.step_size.detach(), ref_init_step(reference.weight.detach(), bits))

    # a smaller step than the initial one and two outliers, so that weights clip at both ends
    with torch.no_grad():
        quant.step_size.mul_(0.5)
        quant.weight.view(-1)[:2] = torch.tensor([1.0, -1.0]) * 2 ** (bits + 1) * quant.step_size.max()
    s = quant.step_size.detach().clone()
    w = quant.weight.detach().clone()
    assert ((w / s) > ref_range(bits)[1]).any() and ((w / s) < -ref_range(bits)[0]).any()
    assert torch.equal(quant.quantized_weight().detach(), ref_quantize(w, s, bits))

    x = _input(kind)
    out = quant(x)
    w_hat = ref_quantize(w, s, bits).requires_grad_()
    ref_out = _float_forward(reference, x, w_hat)
    torch.testing.assert_close(out, ref_out)

    upstream_out = torch.randn_like(out)
    (out * upstream_out).sum().backward()
    (ref_out * upstream_out).sum().backward()
    grad_w, grad_s = ref_grads(w, s, bits, w_hat.grad)
    torch.testing.assert_close(quant.weight.grad, grad_w)
    torch.testing.assert_close(quant.step_size.grad, grad_s)


@pytest.mark.parametrize("bits", BITS)
def test_codes_stay_in_the_signed_range_and_reach_both_ends(bits):
    q_n, q_p = ref_range(bits)
    quant = QuantLinear.from_float(nn.Linear(64, 3), bits)
    with torch.no_grad():  # far past both clipping points
        quant.weight[:, :2] = torch.tensor([1000.0, -1000.0]) * quant.step_size
    codes = quant.integer_codes()
    assert codes.min().item() == -q_n and codes.max().item() == q_p
    assert codes.dtype == torch.int32
    assert len(torch.unique(codes)) <= 2 ** bits
    assert torch.equal(quant.quantized_weight().detach(), codes.float() * quant.step_size.detach())


@pytest.mark.parametrize("bits", [0, 1, 17, 2.5, True, "7"])
def test_bad_bits_is_a_usage_error(bits):
    with pytest.raises(UsageError, match="q_bits"):
        quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3)), bits)


def test_zero_channel_gets_a_positive_step():
    layer = nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        layer.weight[1] = 0
    quant = QuantConv2d.from_float(layer, 4)
    assert (quant.step_size > 0).all()
    assert torch.isfinite(quant(torch.randn(1, 2, 3, 3))).all()


# ------------------------------------------------------------------------------- swapping

def _hparams(algorithm="ERM", dataset="Synthetic", **overrides):
    hparams = hparams_registry.default_hparams(algorithm, dataset)
    hparams.update(pretrained=False, **overrides)
    return hparams


def _erm(input_shape=(3, 28, 28), **overrides):
    torch.manual_seed(0)
    return algorithms.get_algorithm_class("ERM")(input_shape, 3, 2, _hparams(**overrides))


def test_swap_reuses_parameters_and_covers_every_conv_including_the_stem():
    erm = _erm((3, 32, 32), backbone="resnet18")
    weights = {name: m.weight for name, m in erm.named_modules() if isinstance(m, nn.Conv2d)}
    layers = quantize_model(erm, 7)
    assert "featurizer.network.conv1" in layers
    assert set(layers) == set(weights)
    assert not any(type(m) is nn.Conv2d for m in erm.modules())
    for name, layer in layers.items():
        assert layer.weight is weights[name]
    # ERM's network is the same featurizer: both paths see the same quantized layer
    assert erm.network[0].network.conv1 is erm.featurizer.network.conv1
    assert isinstance(erm.classifier, nn.Linear) and not isinstance(erm.classifier, QuantLinear)


def test_q_linear_and_exclude():
    erm = _erm()
    layers = quantize_model(erm, 4, q_linear=True, exclude="featurizer.conv1, classifier")
    assert "featurizer.conv1" not in layers and "classifier" not in layers
    assert type(erm.featurizer.conv1) is nn.Conv2d and type(erm.classifier) is nn.Linear
    assert isinstance(erm.featurizer.conv2, QuantConv2d)
    erm = _erm(input_shape=(12,))
    layers = quantize_model(erm, 4, q_linear=True, exclude=["featurizer.hiddens"])
    assert set(layers) == {"featurizer.input", "featurizer.output", "classifier"}
    with pytest.raises(UsageError, match="q_exclude 'featurizer.conv9' names no quantizable layer"):
        quantize_model(_erm(), 7, exclude=("featurizer.conv9",))
    erm = _erm()  # another name of the same layer (ERM's network is Sequential(featurizer, classifier))
    assert "featurizer.conv1" not in quantize_model(erm, 7, exclude="network.0.conv1")
    assert type(erm.featurizer.conv1) is nn.Conv2d


def test_quantized_model_stays_close_to_float_at_8_bits():
    erm = _erm().eval()
    x = torch.randn(4, 3, 28, 28)
    before = erm.predict(x).detach()
    quantize_model(erm, 8)
    after = erm.predict(x).detach()
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, before, atol=0.05, rtol=0.05)


def test_step_sizes_join_the_weights_param_group_and_keep_optimizer_state():
    erm = _erm()
    x, y = torch.randn(6, 3, 28, 28), torch.randint(0, 3, (6,))
    erm.update([(x[:3], y[:3]), (x[3:], y[3:])])
    state = {id(p): erm.optimizer.state[p]["exp_avg"].clone() for p in erm.parameters()}
    layers = quantize_model(erm, 7)
    frozen = nn.Parameter(torch.ones(1))
    left_out = erm.add_parameters_to_optimizers(
        [(m.step_size, m.weight) for m in layers.values()] + [(nn.Parameter(torch.ones(1)), frozen)])
    assert len(left_out) == 1
    group_params = erm.optimizer.param_groups[0]["params"]
    assert all(any(p is m.step_size for p in group_params) for m in layers.values())
    for p in erm.parameters():
        if id(p) in state:
            assert torch.equal(erm.optimizer.state[p]["exp_avg"], state[id(p)])


def test_every_latent_weight_and_step_size_learns_after_the_swap():
    erm = _erm((3, 32, 32), backbone="resnet18", batch_size=4)
    layers = quantize_model(erm, 7)
    erm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
    before = {name: (m.weight.detach().clone(), m.step_size.detach().clone()) for name, m in layers.items()}
    torch.manual_seed(1)
    for _ in range(2):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
        erm.update([(x[:4], y[:4]), (x[4:], y[4:])])
    for name, m in layers.items():
        assert not torch.equal(m.weight, before[name][0]), name
        assert not torch.equal(m.step_size, before[name][1]), name


# ------------------------------------------------------------------------ compact checkpoint

@pytest.mark.parametrize("bits", BITS)
def test_pack_unpack_round_trip(bits):
    q_n, q_p = ref_range(bits)
    codes = torch.randint(-q_n, q_p + 1, (3, 5, 7), dtype=torch.int32)
    codes.view(-1)[:2] = torch.tensor([-q_n, q_p], dtype=torch.int32)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(codes.numel() * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, codes.shape), codes)


def _trained_quantized_erm(bits):
    erm = _erm()
    layers = quantize_model(erm, bits, q_linear=True)
    erm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
    for _ in range(2):
        x, y = torch.randn(6, 3, 28, 28), torch.randint(0, 3, (6,))
        erm.update([(x[:3], y[:3]), (x[3:], y[3:])])
    return erm.eval(), layers


def _meta(erm, layers, bits):
    return {"algorithm": "ERM", "input_shape": (3, 28, 28), "num_classes": 3, "num_domains": 2,
            "hparams": erm.hparams, "dataset": "Synthetic", "environments": ["d0", "d1", "d2"],
            "test_envs": [0], "transforms": {"quant": {"bits": bits, "q_linear": True, "exclude": [],
                                                       "layers": list(layers)}}}


@pytest.mark.parametrize("bits", [2, 4, 7, 8])
def test_compact_checkpoint_round_trip_and_size(tmp_path, bits):
    erm, layers = _trained_quantized_erm(bits)
    meta = _meta(erm, layers, bits)
    compact_path, float_path = tmp_path / "compact.pth", tmp_path / "float.pth"
    save_compact(compact_path, erm, meta)
    model_io.save_model(float_path, erm, meta)

    loaded, loaded_meta = load_compact(compact_path)
    reloaded, _ = model_io.load_model(float_path)
    x = torch.randn(16, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.predict(x), erm.predict(x))
        assert torch.equal(reloaded.predict(x), erm.predict(x))
    assert loaded_meta["transforms"] == meta["transforms"]

    n_quantized = sum(m.weight.numel() for m in layers.values())
    n_other = sum(p.numel() for p in erm.parameters()) - n_quantized  # incl. step sizes and biases
    compact_bytes, float_bytes = compact_path.stat().st_size, float_path.stat().st_size
    payload = n_quantized * bits / 8 + n_other * 4
    assert payload <= compact_bytes <= payload * 1.02 + 30_000
    assert float_bytes >= (n_quantized + n_other) * 4
    expected_ratio = (n_quantized + n_other) * 32 / (n_quantized * bits + n_other * 32)
    assert float_bytes / compact_bytes > 0.9 * expected_ratio


def test_model_size_counts_quantized_weights_at_their_bits():
    erm, layers = _trained_quantized_erm(4)
    size, float_size = model_size_mb(erm)
    n_quantized = sum(m.weight.numel() for m in layers.values())
    n_steps = sum(m.step_size.numel() for m in layers.values())
    n_all = sum(p.numel() for p in erm.parameters())
    assert size == pytest.approx((n_quantized * 4 + (n_all - n_quantized) * 32) / 8 / 2**20)
    assert float_size == pytest.approx((n_all - n_steps) * 32 / 8 / 2**20)


def test_compact_failure_paths(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_compact(tmp_path / "missing.pth")
    with pytest.raises(UsageError, match="not a compact quantized checkpoint"):
        expand_state({"tensors": {}})


def test_rebuild_refuses_a_model_whose_layers_differ(tmp_path):
    from domainbed.quant.extension import rebuild_quantized

    with pytest.raises(UsageError, match="quantized layers"):
        rebuild_quantized(_erm(), {"bits": 7, "q_linear": False, "exclude": [], "layers": ["featurizer.conv1"]})


# ----------------------------------------------------------------------------- the extension

def _run_hparams(**overrides):
    from domainbed.hparams import config

    defaults = _hparams() | hparams_registry.run_setting_defaults("ERM", "Synthetic")
    return build_hparams(defaults, config.BASE_CONFIG, (), [(k, v) for k, v in overrides.items()])


def test_extension_is_off_by_default_and_quant_1_turns_it_on():
    assert make_quantization(_run_hparams()) is None
    extension = make_quantization(_run_hparams(quant="1", q_steps="100", q_bits="4", q_exclude="a,b"))
    assert (extension.q_steps, extension.bits, extension.exclude) == (100, 4, ("a", "b"))
    with pytest.raises(UsageError, match="quant expects bool"):
        _run_hparams(quant="2")


@pytest.mark.parametrize("overrides, message", [
    ({"q_bits": "1"}, "hparam q_bits 1 is out of range; valid: an integer from 2 to 16"),
    ({"q_steps": "-1"}, "hparam q_steps -1 is out of range; valid: an integer >= 0"),
])
def test_quantization_settings_have_their_declared_ranges(overrides, message):
    from domainbed.hparams.checks import check_hparams

    with pytest.raises(UsageError, match=message):
        check_hparams("ERM", "Synthetic", _run_hparams(quant="1", **overrides))


# ------------------------------------------------------------------------------------ CORAL

def test_coral_distance_matches_numpy():
    from domainbed.algorithms.coral import coral_distance

    rng = np.random.RandomState(0)
    a, b = rng.randn(9, 4), rng.randn(7, 4) * 2 + 1
    expected = np.mean((a.mean(0) - b.mean(0)) ** 2) + np.mean((np.cov(a.T) - np.cov(b.T)) ** 2)
    got = coral_distance(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(expected)
    assert coral_distance(torch.tensor(a), torch.tensor(a)).item() == pytest.approx(0.0, abs=1e-12)


def test_coral_update_reports_the_penalty():
    torch.manual_seed(0)
    hparams = _hparams("CORAL")
    assert hparams["mmd_gamma"] == 1.0
    coral = algorithms.get_algorithm_class("CORAL")((3, 28, 28), 3, 3, hparams)
    batches = [(torch.randn(4, 3, 28, 28) + i, torch.randint(0, 3, (4,))) for i in range(3)]
    stats = coral.update(batches)
    assert set(stats) == {"loss", "penalty"} and stats["penalty"] > 0


# --------------------------------------------------------------------------------- MixStyle

def test_mixstyle_mixes_instance_statistics():
    from domainbed.algorithms.mixstyle import MixStyle

    torch.manual_seed(0)
    x = torch.randn(6, 2, 5, 5) * torch.arange(1, 7).view(6, 1, 1, 1) + torch.arange(6).view(6, 1, 1, 1)
    mixstyle = MixStyle(p=1.0, alpha=0.1)
    assert torch.equal(mixstyle.eval()(x), x)
    torch.manual_seed(3)
    out = mixstyle.train()(x)
    torch.manual_seed(3)
    torch.rand(())
    lam = torch.distributions.Beta(0.1, 0.1).sample((6, 1, 1, 1))
    perm = torch.randperm(6)
    mu, sigma = x.mean((2, 3), keepdim=True), (x.var((2, 3), keepdim=True) + 1e-6).sqrt()
    expected_mu = lam * mu + (1 - lam) * mu[perm]
    expected_sigma = lam * sigma + (1 - lam) * sigma[perm]
    torch.testing.assert_close(out.mean((2, 3), keepdim=True), expected_mu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close((out.var((2, 3), keepdim=True) + 1e-6).sqrt(), expected_sigma, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("input_shape, overrides", [((3, 28, 28), {}), ((3, 32, 32), {"backbone": "resnet18"})])
def test_mixstyle_algorithm_trains_and_is_plain_at_evaluation(input_shape, overrides):
    torch.manual_seed(0)
    hparams = _hparams("Mixstyle", **overrides)
    hparams["mixstyle_p"] = 1.0
    alg = algorithms.get_algorithm_class("Mixstyle")(input_shape, 3, 2, hparams)
    x = torch.randn(8, *input_shape)
    alg.update([(x[:4], torch.randint(0, 3, (4,))), (x[4:], torch.randint(0, 3, (4,)))])
    alg.eval()
    with torch.no_grad():
        assert torch.equal(alg.predict(x), alg.network(x))
        averaged = copy.deepcopy(alg)
        alg.train()  # the copy's MixStyle follows the copy's mode, not the original's
        assert torch.equal(averaged.predict(x), averaged.network(x))
        assert not averaged.mixstyle.training


def test_mixstyle_needs_a_spatial_backbone():
    with pytest.raises(UsageError, match="Mixstyle mixes the statistics of a CNN.s feature maps and MLP has no style_sites"):
        algorithms.get_algorithm_class("Mixstyle")((12,), 3, 2, _hparams("Mixstyle"))


# -------------------------------------------------------------------------------- DeiT-Small

def test_deit_small_builds_and_its_linear_layers_quantize(tmp_path):
    pytest.importorskip("timm")
    from domainbed.networks import get_backbone

    torch.manual_seed(0)
    hparams = _hparams(backbone="deit_small", resnet_dropout=0.0)
    deit = get_backbone("deit_small")((3, 32, 32), hparams)
    assert deit.n_outputs == 384
    x = torch.randn(2, 3, 32, 32)
    assert deit(x).shape == (2, 384)

    import timm

    imagenet = timm.create_model("deit_small_patch16_224", pretrained=False)  # the layout of DeiT's file
    path = tmp_path / "deit.pth"
    torch.save({"model": imagenet.state_dict()}, path)
    loaded = get_backbone("deit_small")((3, 32, 32), {**hparams, "pretrained": True, "pretrained_path": str(path)})
    assert torch.equal(loaded.network.blocks[0].attn.qkv.weight, imagenet.blocks[0].attn.qkv.weight)
    assert loaded(x).shape == (2, 384)

    layers = quantize_model(deit.eval(), 7, q_linear=True)
    assert sum(isinstance(m, QuantLinear) for m in layers.values()) == 12 * 4
    assert sum(isinstance(m, QuantConv2d) for m in layers.values()) == 1
    assert torch.isfinite(deit(x)).all()


def test_deit_small_missing_weights_is_one_line(tmp_path):
    pytest.importorskip("timm")
    from domainbed.networks import get_backbone

    hparams = _hparams(backbone="deit_small", pretrained_path=str(tmp_path / "nope.pth"))
    hparams["pretrained"] = True
    with pytest.raises(UsageError, match="pretrained_path .* is not a file") as error:
        get_backbone("deit_small")((3, 32, 32), hparams)
    assert "\n" not in str(error.value)
    bad = tmp_path / "bad.pth"
    torch.save({"unrelated": torch.zeros(1)}, bad)
    with pytest.raises(UsageError, match="cannot load ImageNet weights for deit_small from"):
        get_backbone("deit_small")((3, 32, 32), {**hparams, "pretrained_path": str(bad)})
