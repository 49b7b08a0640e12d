"""DMG (per-domain masks), its MultiHead baseline, and the AlexNet backbone they share."""

import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import hparams_registry, networks
from domainbed.algorithms import get_algorithm_class
from domainbed.errors import UsageError
from domainbed.training.step_stats import as_numbers

K = 5  # classes
D = 3  # source domains


def make(algorithm, input_shape=(3, 32, 32), num_domains=D, **overrides):
    hparams = hparams_registry.default_hparams(algorithm, "PACS")
    hparams.update(pretrained=False, backbone="resnet18")
    hparams.update(overrides)
    torch.manual_seed(0)
    return get_algorithm_class(algorithm)(input_shape, K, num_domains, hparams)


def minibatches(input_shape, n_domains=D, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *input_shape, generator=generator), torch.randint(0, K, (batch,), generator=generator))
            for _ in range(n_domains)]


def official_overlap(probs):
    """The official SuperMask.overlap_penalty for one layer: mean over pairs of the soft IoU."""
    ious = []
    for a, b in itertools.combinations(probs, 2):
        ious.append(((a * b).sum() + 1e-6) / ((a + b - a * b).sum() + 1e-6))
    return torch.stack(ious).mean()


def resnet_features(featurizer, x, m3=None, m4=None):
    """ResNet features with the inputs of layer3 and layer4 multiplied by per-channel masks."""
    net = featurizer.network
    h = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))
    if m3 is not None:
        h = h * m3[:, :, None, None]
    h = net.layer3(h)
    if m4 is not None:
        h = h * m4[:, :, None, None]
    return torch.flatten(net.avgpool(net.layer4(h)), 1)


# --- DMG ---------------------------------------------------------------------------------


def test_masks_are_per_domain_parameters_with_their_own_adam():
    alg = make("DMG", (3, 32, 32), mask_layers="layer3,layer4,fc", mask_lr=3e-3, lr=1e-4)
    shapes = {name: tuple(p.shape) for name, p in alg.masks.logits.items()}
    assert shapes == {"layer3": (D, 128), "layer4": (D, 256), "fc": (D, 512)}
    for theta in alg.masks.parameters():
        assert 0 <= theta.min() and theta.max() <= 1  # init uniform in [0, 1]
    mask_ids = {id(p) for p in alg.masks.parameters()}
    model_ids = {id(p) for group in alg.optimizer.param_groups for p in group["params"]}
    assert isinstance(alg.mask_optimizer, torch.optim.Adam)
    assert {id(p) for group in alg.mask_optimizer.param_groups for p in group["params"]} == mask_ids
    assert not mask_ids & model_ids
    assert alg.mask_optimizer.param_groups[0]["lr"] == 3e-3 and alg.optimizer.param_groups[0]["lr"] == 1e-4
    assert set(alg.optimizers()) == {"optimizer", "mask_optimizer"}
    scalar = make("DMG", mask_init="scalar", mask_init_scalar=2.5)
    assert (scalar.masks.logits["fc"] == 2.5).all()


def test_penalties_and_loss_match_the_formula():
    alg = make("DMG", (3, 32, 32), mask_layers="layer4,fc", overlap_lambda=0.1, sparsity_lambda=0.5)
    with torch.no_grad():
        for theta in alg.masks.parameters():
            theta.copy_(torch.randn(theta.shape, generator=torch.Generator().manual_seed(theta.shape[1])) * 2)
    probs = {name: torch.sigmoid(theta.detach()) for name, theta in alg.masks.logits.items()}
    overlap = sum(official_overlap(p) for p in probs.values())
    sparsity = sum(p.sum() / p.shape[1] for p in probs.values())
    assert alg.masks.overlap_penalty().item() == pytest.approx(overlap.item(), rel=1e-6)
    assert alg.masks.sparsity_penalty().item() == pytest.approx(sparsity.item(), rel=1e-6)
    stats = as_numbers(alg.update(minibatches((3, 32, 32), batch=2)))
    assert stats["overlap"] == pytest.approx(overlap.item(), rel=1e-6)
    assert stats["sparsity"] == pytest.approx(sparsity.item(), rel=1e-6)
    assert stats["loss"] == pytest.approx(stats["ce"] + 0.1 * stats["overlap"] + 0.5 * stats["sparsity"], rel=1e-6)


def test_overlap_of_a_single_domain_is_zero():
    alg = make("DMG", num_domains=1)
    assert alg.masks.overlap_penalty().item() == 0.0
    assert alg.update(minibatches((3, 32, 32), n_domains=1))["overlap"] == 0.0


def test_each_sample_is_trained_with_its_own_domains_hard_mask():
    alg = make("DMG", overlap_lambda=0.0)
    patterns = torch.zeros(D, 512)
    for d in range(D):
        patterns[d, d * 150:(d + 2) * 150] = 1  # overlapping, distinct unit sets
    with torch.no_grad():
        alg.masks.logits["fc"].copy_(patterns * 60 - 30)  # p is 1 or 1e-13: the draws are certain
    batches = minibatches((3, 32, 32))
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    rows = torch.arange(D).repeat_interleave(3)
    with torch.no_grad():
        expected = F.cross_entropy(alg.classifier(alg.featurizer(x) * patterns[rows]), y).item()
    assert alg.update(batches)["ce"] == pytest.approx(expected, rel=1e-5)


def test_sampled_masks_are_hard_with_a_straight_through_gradient():
    alg = make("DMG")
    domains = torch.tensor([0, 0, 1, 2, 2, 2])
    torch.manual_seed(1)
    mask = alg.sampled_masks(domains)["fc"]
    assert mask.shape == (6, 512)
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    weights = torch.arange(1.0, 7.0)
    (mask * weights[:, None]).sum().backward()
    p = torch.sigmoid(alg.masks.logits["fc"].detach())
    per_domain = torch.zeros(D).index_add_(0, domains, weights)
    torch.testing.assert_close(alg.masks.logits["fc"].grad, per_domain[:, None] * p * (1 - p))


def test_predict_fc_mask():
    alg = make("DMG")
    alg.eval()
    x = torch.randn(4, 3, 32, 32)
    p = torch.sigmoid(alg.masks.logits["fc"].detach())
    with torch.no_grad():
        features = alg.featurizer(x)
        for env in range(D):
            expected = alg.classifier(features * (p[env] > 0.5).float())
            torch.testing.assert_close(alg.predict(x, env=env), expected)
        unseen = torch.stack([alg.classifier(features * p[d]) for d in range(D)]).mean(0)
        torch.testing.assert_close(alg.predict(x), unseen)
        torch.testing.assert_close(alg.network(x), unseen)


def test_predict_with_masks_inside_the_resnet():
    alg = make("DMG", (3, 32, 32), mask_layers="fc,layer3,layer4")
    alg.eval()
    with torch.no_grad():
        alg.masks.logits["layer3"].copy_(torch.randn(D, 128))  # some units below 0.5
    x = torch.randn(2, 3, 32, 32)
    p = {name: torch.sigmoid(theta.detach()) for name, theta in alg.masks.logits.items()}
    with torch.no_grad():
        hard = {name: (q > 0.5).float() for name, q in p.items()}
        assert (hard["layer3"] == 0).any()
        expected = alg.classifier(resnet_features(alg.featurizer, x, hard["layer3"][1:2], hard["layer4"][1:2])
                                  * hard["fc"][1])
        torch.testing.assert_close(alg.predict(x, env=1), expected)
        unseen = torch.stack([
            alg.classifier(resnet_features(alg.featurizer, x, p["layer3"][d:d + 1], p["layer4"][d:d + 1]) * p["fc"][d])
            for d in range(D)
        ]).mean(0)
        torch.testing.assert_close(alg.predict(x), unseen)
        # outside DMG's own forward the featurizer is the plain one
        torch.testing.assert_close(alg.featurizer(x), resnet_features(alg.featurizer, x))


def test_state_dict_and_deepcopy_keep_the_masks():
    alg = make("DMG", (3, 32, 32), mask_layers="fc,layer4")
    alg.update(minibatches((3, 32, 32), batch=2))
    alg.eval()
    x = torch.randn(2, 3, 32, 32)
    fresh = make("DMG", (3, 32, 32), mask_layers="fc,layer4")
    fresh.load_state_dict(alg.state_dict())
    fresh.eval()
    twin = copy.deepcopy(alg)
    with torch.no_grad():
        for other in (fresh, twin):
            torch.testing.assert_close(other.predict(x), alg.predict(x))
            torch.testing.assert_close(other.predict(x, env=2), alg.predict(x, env=2))
        twin.masks.logits["layer4"].fill_(-30)  # the copy's hooks read the copy's masks
        assert not torch.allclose(twin.predict(x, env=0), alg.predict(x, env=0))


@pytest.mark.parametrize("overrides, message", [
    ({"mask_layers": "fc,conv1"}, "conv1"),
    ({"mask_layers": " , "}, "mask_layers"),
    ({"mask_init": "normal"}, "mask_init"),
    ({"resnet_dropout": 0.5}, "resnet_dropout"),
])
def test_bad_hparams_are_one_line_errors(overrides, message):
    with pytest.raises(UsageError) as error:
        make("DMG", **overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_mlp_has_only_the_head_mask_and_bad_env_is_refused():
    with pytest.raises(UsageError, match="valid: fc"):
        make("DMG", (8,), mask_layers="layer3")
    alg = make("DMG", (8,))
    assert alg.update(minibatches((8,)))["loss"] > 0
    with pytest.raises(UsageError, match="env 3"):
        alg.predict(torch.randn(2, 8), env=3)


# --- MultiHead ---------------------------------------------------------------------------


def test_multihead_predicts_with_its_head_or_the_mean_of_heads():
    alg = make("MultiHead", (8,))
    heads = alg.classifier.heads
    assert len(heads) == D
    assert heads[0].weight.std().item() == pytest.approx(0.001, rel=0.2) and (heads[0].bias == 0).all()
    x = torch.randn(4, 8)
    with torch.no_grad():
        features = alg.featurizer(x)
        for env in range(D):
            torch.testing.assert_close(alg.predict(x, env=env), heads[env](features))
        mean = torch.stack([head(features) for head in heads]).mean(0)
        torch.testing.assert_close(alg.predict(x), mean)
        torch.testing.assert_close(alg.network(x), mean)


def test_multihead_trains_each_head_on_its_own_domain_only():
    first = make("MultiHead", (8,), optimizer="sgd", lr=0.1)
    second = copy.deepcopy(first)
    batches = minibatches((8,))
    changed = list(batches)
    changed[1] = (torch.randn(3, 8), torch.tensor([4, 0, 1]))
    first.update(batches)
    second.update(changed)
    same, different = first.classifier.heads, second.classifier.heads
    for d in (0, 2):  # same features before the step, same samples: same head update
        torch.testing.assert_close(same[d].weight, different[d].weight)
    assert not torch.allclose(same[1].weight, different[1].weight)


# --- AlexNet -----------------------------------------------------------------------------


def test_alexnet_backbone_and_its_dmg_masks():
    alg = make("DMG", (3, 64, 64), backbone="alexnet", mask_layers="fc6,fc7,fc")
    featurizer = alg.featurizer
    assert "alexnet" in networks.BACKBONES and featurizer.n_outputs == 4096
    assert {name: width for name, (_, width) in featurizer.mask_sites().items()} == {"fc6": 9216, "fc7": 4096}
    assert {name: p.shape[1] for name, p in alg.masks.logits.items()} == {"fc6": 9216, "fc7": 4096, "fc": 4096}
    alg.train()
    assert all(not m.training for m in featurizer.modules() if isinstance(m, nn.Dropout))  # official
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        z = featurizer.feature_map(x)
        assert z.shape == (2, 256, 6, 6)
        torch.testing.assert_close(featurizer(x), featurizer.pool(z))
        hard = {name: (torch.sigmoid(theta[0]) > 0.5).float() for name, theta in alg.masks.logits.items()}
        c = featurizer.network.classifier
        h = c[1](torch.flatten(z, 1) * hard["fc6"])
        h = c[4](torch.relu(h) * hard["fc7"])
        torch.testing.assert_close(alg.predict(x, env=0), alg.classifier(torch.relu(h) * hard["fc"]))
    stats = alg.update(minibatches((3, 64, 64), batch=1))
    assert stats["loss"] > 0


def test_alexnet_accepts_other_channel_counts():
    hparams = hparams_registry.default_hparams("ERM", "PACS")
    hparams.update(pretrained=False, backbone="alexnet")
    featurizer = networks.Featurizer((2, 64, 64), hparams)
    assert featurizer(torch.randn(1, 2, 64, 64)).shape == (1, 4096)
