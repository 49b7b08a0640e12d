"""MIRO: its regulariser against a computation by hand, one update against the paper's objective
written out here on DomainBed's MNIST CNN, its frozen pretrained featurizer (no gradient, eval
mode, left out of averages, saved models and quantization), its feature layers on every backbone
that declares them, and its run settings (SWAD off unless asked, `--model`)."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import algorithms, hparams_registry
from domainbed.algorithms.miro import VarianceEncoder
from domainbed.averaging.averaged_model import AveragedModel, state_copy
from domainbed.errors import UsageError
from domainbed.hparams.config import run_hparams
from domainbed.networks import Featurizer
from domainbed.quant import quantize_model
from domainbed.quant.compact import load_compact, model_size_mb, save_compact
from domainbed.runs import model_io, persistence

SHAPE, N_CLASSES, N_DOMAINS, BATCH = (3, 28, 28), 3, 2, 2


def _miro(input_shape=SHAPE, seed=0, **overrides):
    hparams = hparams_registry.default_hparams("MIRO", "Synthetic")
    hparams.update({"backbone": "resnet18", "pretrained": False, **overrides})
    torch.manual_seed(seed)
    miro = algorithms.get_algorithm_class("MIRO")(input_shape, N_CLASSES, N_DOMAINS, hparams)
    miro.train()
    return miro


def _minibatches(input_shape=SHAPE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, *input_shape, generator=generator),
             torch.randint(N_CLASSES, (BATCH,), generator=generator)) for _ in range(N_DOMAINS)]


def _set_variance(encoder, variances):
    """b so that softplus(b) + eps is `variances` (one per channel)."""
    with torch.no_grad():
        target = torch.tensor(variances) - encoder.eps
        encoder.b.copy_(target.expm1().log().reshape(encoder.b.shape))


def test_the_regulariser_is_half_the_gaussian_negative_log_likelihood_averaged_per_layer():
    miro = _miro()
    maps, tokens = (1, 2, 1, 2), (1, 3, 2)  # (B, C, H, W) and (B, N, C) features of one sample
    miro.mean_encoders = nn.ModuleList([nn.Identity(), nn.Identity()])
    miro.var_encoders = nn.ModuleList([VarianceEncoder(maps), VarianceEncoder(tokens)])
    _set_variance(miro.var_encoders[0], [0.5, 2.0])
    _set_variance(miro.var_encoders[1], [1.0, 4.0])
    z = [torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]]]]), torch.tensor([[[1.0, 0.0], [2.0, 2.0], [0.0, 1.0]]])]
    z0 = [torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]]), torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]]])]
    def term(squared_error, variance):
        return squared_error / variance + math.log(variance)

    # layer 1: channel 0 (variance 0.5) has squared errors 1, 0; channel 1 (variance 2) 1, 4
    layer1 = [term(1, 0.5), term(0, 0.5), term(1, 2.0), term(4, 2.0)]
    # layer 2: three tokens, channel 0 (variance 1) with squared errors 1, 0, 1; channel 1 (variance 4) 0, 4, 0
    layer2 = [term(1, 1.0), term(0, 1.0), term(1, 1.0), term(0, 4.0), term(4, 4.0), term(0, 4.0)]
    expected = sum(layer1) / len(layer1) / 2 + sum(layer2) / len(layer2) / 2
    assert miro.regulariser(z, z0).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):  # one encoder per feature layer
        miro.regulariser(z[:1], z0[:1])


def test_variances_start_at_0_1_per_channel_and_f_starts_at_f0():
    miro = _miro()
    assert [tuple(encoder.b.shape) for encoder in miro.var_encoders] == [(1, 64, 1, 1), (1, 128, 1, 1),
                                                                        (1, 128, 1, 1), (1, 128, 1, 1)]
    for encoder in miro.var_encoders:
        assert torch.allclose(encoder(None), torch.full_like(encoder.b, 0.1))
    # the MNIST CNN's GroupNorm keeps no statistics: at the start f's features are f0's and only
    # the log-variance term is left, 1/2 log 0.1 per feature layer
    stats = miro.update(_minibatches())
    assert stats["reg_loss"] == pytest.approx(4 * 0.5 * math.log(0.1), rel=1e-4)


def _stages(cnn, x) -> list:
    """The MNIST CNN's four blocks, written out: MIRO's feature layers for 28 x 28 images."""
    h0 = cnn.bn0(F.relu(cnn.conv1(x)))
    h1 = cnn.bn1(F.relu(cnn.conv2(h0)))
    h2 = cnn.bn2(F.relu(cnn.conv3(h1)))
    return [h0, h1, h2, cnn.bn3(F.relu(cnn.conv4(h2)))]


@pytest.mark.parametrize("feat_layers, first", [("stem_block", 0), ("block", 1)])
def test_one_update_descends_cross_entropy_plus_lambda_times_the_regulariser(feat_layers, first):
    miro = _miro(optimizer="sgd", lr=0.05, ld=0.3, lr_mult=10.0, feat_layers=feat_layers)
    with torch.no_grad():  # f away from f0, variances apart, so that every term has a gradient
        for p in miro.featurizer.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for encoder in miro.var_encoders:
            encoder.b.add_(torch.randn_like(encoder.b))
    assert len(miro.var_encoders) == 4 - first
    reference = copy.deepcopy(miro)
    minibatches = _minibatches()
    x, y = torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])

    z = _stages(reference.featurizer, x)
    with torch.no_grad():
        z0 = _stages(reference.pre_featurizer.module, x)
    logits = reference.classifier(reference.featurizer.pool(z[-1]))
    ce = F.cross_entropy(logits, y)
    regulariser = 0
    for z_l, z0_l, encoder in zip(z[first:], z0[first:], reference.var_encoders):
        sigma2 = F.softplus(encoder.b) + 1e-5
        regulariser = regulariser + 0.5 * ((z0_l - z_l) ** 2 / sigma2 + torch.log(sigma2)).mean()
    loss = ce + 0.3 * regulariser
    trained = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    grads = dict(zip([n for n, _ in trained], torch.autograd.grad(loss, [p for _, p in trained])))

    stats = miro.update(minibatches)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert stats["reg_loss"] == pytest.approx(regulariser.item(), rel=1e-5)
    after = dict(miro.named_parameters())
    for name, p in reference.named_parameters():
        if name.startswith("pre_featurizer."):
            assert torch.equal(after[name], p) and after[name].grad is None  # f0 is frozen
            continue
        lr = 0.05 * 10.0 if name.startswith("var_encoders.") else 0.05  # the encoders learn lr_mult faster
        assert torch.allclose(after[name], p - lr * grads[name], atol=1e-6), name


def test_f0_stays_in_eval_mode_and_frozen():
    miro = _miro((3, 32, 32))  # a ResNet-18, whose BatchNorm layers train
    assert not any(module.training for module in miro.pre_featurizer.modules())
    assert not any(p.requires_grad for p in miro.pre_featurizer.parameters())
    assert all(id(p) not in {id(q) for q in miro.pre_featurizer.parameters()}
               for group in miro.optimizer.param_groups for p in group["params"])


@pytest.mark.parametrize("backbone, shape, channels", [
    ("resnet18", (3, 32, 32), [64, 64, 128, 256, 512]),
    ("alexnet", (3, 64, 64), [64, 192, 384, 256, 256]),
    (None, (3, 28, 28), [64, 128, 128, 128]),
])
def test_feature_layers_are_the_stem_and_each_stage(backbone, shape, channels):
    hparams = hparams_registry.default_hparams("MIRO", "PACS") | {"pretrained": False, "backbone": backbone or "resnet18"}
    featurizer = Featurizer(shape, hparams).eval()
    outputs = []
    for site in featurizer.stage_sites():
        site.register_forward_hook(lambda module, args, output: outputs.append(output.shape))
    with torch.no_grad():
        featurizer(torch.zeros(2, *shape))
    assert [s[1] for s in outputs] == channels and all(s[0] == 2 for s in outputs)
    assert [s[-1] for s in outputs] == sorted((s[-1] for s in outputs), reverse=True)  # forward order


@pytest.mark.slow  # builds and copies DeiT-Small (22M parameters)
def test_deit_feature_layers_are_the_patch_embedding_and_the_last_block_of_each_quarter():
    pytest.importorskip("timm")
    hparams = hparams_registry.default_hparams("MIRO", "PACS") | {"pretrained": False, "backbone": "deit_small"}
    featurizer = Featurizer((3, 32, 32), hparams)
    blocks = list(featurizer.network.blocks)
    sites = featurizer.stage_sites()
    assert sites[0] is featurizer.network.patch_embed and [blocks.index(s) for s in sites[1:]] == [2, 5, 8, 11]
    miro = _miro((3, 32, 32), backbone="deit_small")
    assert [tuple(encoder.b.shape) for encoder in miro.var_encoders] == [(1, 1, 384)] * 5  # per channel of tokens
    assert math.isfinite(miro.update(_minibatches((3, 32, 32)))["reg_loss"])


def test_a_featurizer_without_feature_layers_is_one_line():
    with pytest.raises(UsageError, match=r"MIRO regularises a backbone's feature layers, and MLP declares none .*"
                                         r"valid: .*--backbone resnet50"):
        _miro((8,))


def test_a_weight_average_leaves_out_f0_and_the_encoders_and_predicts_as_the_network():
    miro = _miro()
    miro.update(_minibatches())
    average = AveragedModel(miro)
    assert average.module.pre_featurizer is None and average.module.var_encoders is None
    assert not any(key.startswith(("pre_featurizer.", "var_encoders.")) for key in average.module.state_dict())
    predicting = ("featurizer.", "classifier.")
    first = {name: p.detach().clone() for name, p in miro.named_parameters() if name.startswith(predicting)}
    average.update_parameters(miro, step=0, params=list(miro.parameters()))  # as the averaging extension calls it
    x = _minibatches(seed=9)[0][0]
    miro.eval()
    average.eval()
    assert torch.equal(average.predict(x), miro.predict(x))  # predicts with the network alone
    miro.train()
    miro.update(_minibatches(seed=1))
    average.update_parameters(miro, step=1)
    averaged = dict(average.module.named_parameters())
    assert list(averaged) == list(first)
    for name, p in miro.named_parameters():
        if name in first:
            assert torch.allclose(averaged[name], (first[name] + p) / 2, atol=1e-7), name
    assert not average.module.stages.outputs  # its hooks stay inert


def test_saved_models_leave_out_f0_and_rebuild_to_the_same_predictions(tmp_path):
    miro = _miro()
    miro.update(_minibatches())
    meta = {"algorithm": "MIRO", "input_shape": SHAPE, "num_classes": N_CLASSES, "num_domains": N_DOMAINS,
            "hparams": miro.hparams, "dataset": "Synthetic", "environments": ["d0", "d1", "d2"], "test_envs": [0],
            "transforms": {}}
    x = _minibatches(seed=3)[0][0]
    for model in (miro, state_copy(miro)):
        model_io.save_model(tmp_path / "final.pth", model, meta)
        saved = persistence.load(tmp_path / "final.pth")["model_dict"]
        assert saved and not any(key.startswith(("pre_featurizer.", "var_encoders.")) for key in saved)
        rebuilt, _ = model_io.load_model(tmp_path / "final.pth")
        assert torch.allclose(rebuilt.predict(x), miro.eval().predict(x))
    with pytest.raises(UsageError, match="does not fit its MIRO model"):  # everything else still loads strictly
        model_io.rebuild(meta, {**saved, "classifier.extra": torch.zeros(1)}, "test")


def test_quantization_leaves_f0_in_float_and_out_of_the_model_size(tmp_path):
    miro = _miro()
    f0 = copy.deepcopy(miro.pre_featurizer.state_dict())
    layers = quantize_model(miro, 7)
    assert layers and not any(name.startswith("pre_featurizer.") for name in layers)
    assert all(type(m) is nn.Conv2d for m in miro.pre_featurizer.modules() if isinstance(m, nn.Conv2d))
    miro.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
    miro.update(_minibatches())
    assert all(torch.equal(v, f0[k]) for k, v in miro.pre_featurizer.state_dict().items())
    assert model_size_mb(miro) == model_size_mb(state_copy(miro))
    meta = {"algorithm": "MIRO", "input_shape": SHAPE, "num_classes": N_CLASSES, "num_domains": N_DOMAINS,
            "hparams": miro.hparams, "dataset": "Synthetic", "environments": ["d0", "d1", "d2"], "test_envs": [0],
            "transforms": {"quant": {"bits": 7, "q_linear": False, "exclude": [], "layers": list(layers)}}}
    save_compact(tmp_path / "compact.pth", miro, meta)
    rebuilt, _ = load_compact(tmp_path / "compact.pth")
    x = _minibatches(seed=4)[0][0]
    assert torch.allclose(rebuilt.predict(x), miro.eval().predict(x), atol=1e-6)


def test_miro_runs_without_swad_unless_asked_and_model_names_the_backbone():
    assert run_hparams("MIRO", "PACS")["swad"] == "False"
    assert run_hparams("MIRO", "PACS", overrides=[("swad", "True")])["swad"] == "True"
    hparams = run_hparams("MIRO", "VLCS", overrides=[("model", "resnet18"), ("ld", "0.01"), ("tolerance_ratio", "0.2")])
    assert (hparams["backbone"], hparams["ld"], hparams["swad_kwargs"]["tolerance_ratio"]) == ("resnet18", 0.01, 0.2)
    with pytest.raises(UsageError, match="hparam backbone needs a value"):
        run_hparams("MIRO", "PACS", overrides=[("model", True)])


def test_declared_defaults_and_draws():
    defaults = hparams_registry.default_hparams("MIRO", "PACS")
    assert (defaults["ld"], defaults["lr_mult"], defaults["feat_layers"]) == (0.1, 10.0, "stem_block")
    draws = {hparams_registry.random_hparams("MIRO", "PACS", seed)["ld"] for seed in range(40)}
    assert draws == {0.001, 0.01, 0.1, 1.0}
    assert {hparams_registry.random_hparams("MIRO", "PACS", seed)["lr_mult"] for seed in range(5)} == {10.0}


@pytest.mark.parametrize("extra, averaged", [([], False), (["--swad", "True"], True)])
def test_trains_with_and_without_swad_and_quantized(run_train_all, extra, averaged):
    result = run_train_all("miro", "--dataset", "Synthetic", "--algorithm", "MIRO", "--steps", "4",
                           "--checkpoint_freq", "2", "--test_envs", "0", "--batch_size", "4", "--swad_bn_steps", "1",
                           "--quant", "1", "--q_steps", "2", *extra)
    assert ("SWAD" in result["rows"]) is averaged and "model size" in result["notes"]


class _Backbone(nn.Module):
    """A featurizer whose feature layers are given: `sites` picks among its modules."""

    n_outputs = 4

    def __init__(self, sites):
        super().__init__()
        self.stem, self.stage, self.unused = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)
        self.pair = _Pair()
        self.sites = sites

    def forward(self, x):
        x = self.stage(self.stem(x))
        self.pair(x)
        return x.mean(dim=(2, 3))

    def stage_sites(self):
        return [getattr(self, name) for name in self.sites]


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


@pytest.mark.parametrize("sites, overrides, message", [
    (["stem", "unused"], {}, r"_Backbone.stage_sites\(\) names layers its forward never runs \(Conv2d\); valid: "),
    (["stem"], {"feat_layers": "block"}, r"MIRO found no feature layer: _Backbone.stage_sites\(\) gives 1 and "
                                         r"feat_layers 'block' keeps none; valid: feat_layers stem_block"),
    (["stem", "pair"], {}, r"MIRO's feature layer _Pair returns tuple; valid: a tensor"),
])
def test_feature_layers_a_backbone_cannot_give_are_one_line(monkeypatch, sites, overrides, message):
    from domainbed import networks

    monkeypatch.setattr(networks, "Featurizer", lambda input_shape, hparams: _Backbone(sites))
    with pytest.raises(UsageError, match=message):
        _miro((3, 16, 16), **overrides)
