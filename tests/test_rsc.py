"""RSC: which units are muted, which samples are challenged, the curriculum, both variants."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.algorithms.rsc import challenged, mute_top, n_muted
from domainbed.errors import UsageError

K = 5  # classes


def make_rsc(input_shape=(3, 32, 32), num_domains=3, **overrides):
    hparams = hparams_registry.default_hparams("RSC", "PACS")
    hparams.update(pretrained=False, backbone="resnet18", resnet_dropout=0.0)
    hparams.update(overrides)
    torch.manual_seed(0)
    return get_algorithm_class("RSC")(input_shape, K, num_domains, hparams)


def minibatches(input_shape, n_domains=3, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *input_shape, generator=generator), torch.randint(0, K, (batch,), generator=generator))
            for _ in range(n_domains)]


def true_class_probability(logits, y):
    return logits.softmax(1)[torch.arange(len(y)), y]


# --- the pure rules ----------------------------------------------------------------------


def test_number_of_muted_units_is_the_official_ceiling():
    assert n_muted(49, 1 / 3) == 17  # ResNet at 224 px: ceil(49 / 3)
    assert n_muted(48, 1 / 3) == 16  # not 17 through float error
    assert n_muted(9, 1 / 3) == 3
    assert n_muted(512, 1 / 3.2) == 160 and n_muted(2048, 1 / 3.2) == 640
    assert n_muted(1, 1 / 3) == 1 and n_muted(10, 0.0) == 0


def test_mute_top_zeroes_exactly_the_k_largest_without_ties():
    scores = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    keep = mute_top(scores, 17)
    assert (keep == 0).sum(1).tolist() == [17] * 6
    top = scores.topk(17, dim=1).indices
    assert (keep.gather(1, top) == 0).all()
    assert keep.sum() == 6 * (50 - 17)


def test_mute_top_keeps_ties_at_the_threshold_as_the_official_code():
    scores = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    assert mute_top(scores, 2).tolist() == [[0, 1, 1, 1, 1, 1], [1] * 6]
    assert mute_top(scores, 3).tolist() == [[0, 0, 0, 1, 1, 1], [1] * 6]
    assert mute_top(scores, 0).tolist() == [[1] * 6] * 2
    assert mute_top(scores, 6).tolist() == [[0] * 6] * 2


def test_challenged_samples_are_those_above_the_value_at_round_n_times_p():
    change = torch.tensor([0.05, 0.9, 0.3, 0.0, 0.6, 0.2, 0.01, 0.4, 0.7, 0.1])
    chosen = challenged(change, 0.3)  # position round(3.0) = 3 -> the three largest
    assert chosen.nonzero().flatten().tolist() == [1, 4, 8]
    assert challenged(change, 0.5).sum() == 5
    assert challenged(change, 0.0).sum() == 0  # position 0: nothing is above the maximum
    # past the end the value is 0: every sample whose confidence dropped at all
    assert challenged(change, 1.0).nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    # python's round: round(5 * 0.5) = 2, round(5 * 0.3) = 2
    five = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1])
    assert challenged(five, 0.5).sum() == 2 and challenged(five, 0.3).sum() == 2


def test_challenged_ties_and_edge_cases():
    ties = torch.tensor([0.9, 0.5, 0.5, 0.1])
    assert challenged(ties, 0.5).tolist() == [True, False, False, False]  # the tie at position 2 stays
    assert challenged(torch.zeros(8), 0.3).sum() == 0  # no confidence dropped: nobody
    assert challenged(torch.zeros(8), 1.0).sum() == 0
    one = torch.tensor([0.2])
    assert not challenged(one, 0.3).item() and not challenged(one, 0.5).item()
    assert challenged(one, 1.0).item() and not challenged(torch.tensor([0.0]), 1.0).item()


# --- the official variant on a small ResNet ----------------------------------------------


def _map_and_labels(batch=6, channels=512, size=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.rand(batch, channels, size, size, generator=generator)
    return z, torch.randint(0, K, (batch,), generator=generator)


def _head_gradient(alg, z, y):
    z = z.clone().requires_grad_()
    logits = alg.classifier(alg.featurizer.pool(z))
    logits[torch.arange(len(y)), y].sum().backward()
    return z.grad


def test_channel_mode_mutes_the_top_gradient_channels():
    alg = make_rsc(rsc_mode="channel")
    z, y = _map_and_labels()
    g = _head_gradient(alg, z, y)
    mask = alg.feature_mask(z, g, spatial=False)
    assert mask.shape == (6, 512, 1, 1)
    # a linear head over average pooling: d logit_y / dz[c, h, w] = W[y, c] / HW
    expected = alg.classifier.weight[y].detach().topk(160, dim=1).indices
    for i in range(6):
        assert set((mask[i].flatten() == 0).nonzero().flatten().tolist()) == set(expected[i].tolist())
    assert (mask == 0).float().mean().item() == pytest.approx(160 / 512)


def test_spatial_mode_mutes_the_top_grad_cam_positions():
    alg = make_rsc(rsc_mode="spatial")
    z, y = _map_and_labels(size=4)
    g = _head_gradient(alg, z, y)
    mask = alg.feature_mask(z, g, spatial=True)
    assert mask.shape == (6, 1, 4, 4)
    cam = (z * g.mean((2, 3), keepdim=True)).sum(1).flatten(1)
    k = 6  # ceil(16 / 3)
    for i in range(6):
        muted = set((mask[i].flatten() == 0).nonzero().flatten().tolist())
        assert muted == set(cam[i].topk(k).indices.tolist())


def test_activation_and_random_strategies():
    z, y = _map_and_labels(size=3)
    alg = make_rsc(rsc_drop_strategy="activation")
    g = _head_gradient(alg, z, y)
    spatial = alg.feature_mask(z, g, spatial=True).flatten(1)
    assert set((spatial[0] == 0).nonzero().flatten().tolist()) == set(z[0].sum(0).flatten().topk(3).indices.tolist())
    channel = alg.feature_mask(z, g, spatial=False).flatten(1)
    assert set((channel[0] == 0).nonzero().flatten().tolist()) == set(z[0].mean((1, 2)).topk(160).indices.tolist())
    alg = make_rsc(rsc_drop_strategy="random")
    torch.manual_seed(3)
    random = alg.feature_mask(z, g, spatial=False).flatten(1)
    assert (random == 0).sum(1).tolist() == [160] * 6
    assert not torch.equal(random[0], random[1])


def test_feature_drop_percentages_are_hparams():
    alg = make_rsc(rsc_spatial_drop=0.5, rsc_channel_drop=0.25)
    z, y = _map_and_labels(size=4)
    g = _head_gradient(alg, z, y)
    assert (alg.feature_mask(z, g, spatial=True) == 0).sum(dim=(1, 2, 3)).tolist() == [8] * 6
    assert (alg.feature_mask(z, g, spatial=False) == 0).sum(dim=(1, 2, 3)).tolist() == [128] * 6


def test_both_mode_draws_one_mode_per_batch():
    alg = make_rsc(rsc_mode="both", rsc_batch_percent=1.0, rsc_batch_increment=0.0)
    with torch.no_grad():
        alg.classifier.weight.mul_(50)  # confident head: muting drops the confidence
    z, y = _map_and_labels(size=3)
    kinds = set()
    torch.manual_seed(0)
    for _ in range(12):
        mask, chosen = alg.self_challenge(z, y)
        assert chosen.any()
        kinds.add(tuple(mask.shape[1:]))
    assert kinds == {(1, 3, 3), (512, 1, 1)}


def test_selected_samples_keep_the_mask_and_the_others_are_untouched():
    alg = make_rsc(rsc_mode="channel", rsc_batch_percent=0.3, rsc_batch_increment=0.0)
    with torch.no_grad():
        alg.classifier.weight.mul_(30)
    z, y = _map_and_labels(batch=10, size=3, seed=4)
    mask, chosen = alg.self_challenge(z, y)
    g = _head_gradient(alg, z, y)
    before = alg.feature_mask(z, g, spatial=False)
    with torch.no_grad():
        p_before = true_class_probability(alg.classifier(alg.featurizer.pool(z)), y)
        p_after = true_class_probability(alg.classifier(alg.featurizer.pool(z * before)), y)
    change = (p_before - p_after - 1e-4).clamp_min(0)
    assert (change > 0).sum() > 3
    expected = change.argsort(descending=True)[:3]  # round(10 * 0.3) = 3, no ties here
    assert set(chosen.nonzero().flatten().tolist()) == set(expected.tolist())
    for i in range(10):
        if chosen[i]:
            assert torch.equal(mask[i], before[i])
        else:
            assert (mask[i] == 1).all()


def test_update_trains_on_the_masked_map_and_reaches_the_backbone():
    alg = make_rsc(input_shape=(3, 96, 96), rsc_mode="channel")
    with torch.no_grad():
        alg.classifier.weight.mul_(30)
    batches = minibatches((3, 96, 96), batch=2)
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    with torch.no_grad():
        z = alg.featurizer.feature_map(x)
    mask, chosen = alg.self_challenge(z, y)
    expected = F.cross_entropy(alg.classifier(alg.featurizer.pool(z * mask)), y).item()
    conv = alg.featurizer.network.conv1.weight.detach().clone()
    stats = alg.update(batches)
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    assert stats["challenged"] == pytest.approx(chosen.float().mean().item())
    assert not torch.equal(conv, alg.featurizer.network.conv1.weight)


def test_batch_of_one_and_no_confidence_drop():
    alg = make_rsc(input_shape=(3, 64, 64))
    stats = alg.update([(torch.randn(1, 3, 64, 64), torch.tensor([2]))])  # round(0.3) = 0: unchallenged
    assert stats["challenged"] == 0.0
    alg = make_rsc(input_shape=(3, 64, 64), rsc_batch_percent=1.0, rsc_batch_increment=0.0)
    with torch.no_grad():
        alg.classifier.weight.zero_()  # every logit equal: muting cannot move any confidence
    batches = minibatches((3, 64, 64), batch=2)
    with torch.no_grad():
        erm_loss = F.cross_entropy(alg.predict(torch.cat([x for x, _ in batches])),
                                   torch.cat([y for _, y in batches])).item()
    stats = alg.update(batches)
    assert stats["challenged"] == 0.0
    assert stats["loss"] == pytest.approx(erm_loss, rel=1e-6)


def test_featurizers_without_a_spatial_map_use_the_channel_mode():
    alg = make_rsc(input_shape=(8,))
    stats = alg.update(minibatches((8,)))
    assert torch.isfinite(torch.as_tensor(stats["loss"]))
    with pytest.raises(UsageError, match="spatial"):
        make_rsc(input_shape=(8,), rsc_mode="spatial")
    alg = make_rsc(input_shape=(3, 32, 32), rsc_mode="spatial")  # ResNet at 32 px: a 1x1 map
    with pytest.raises(UsageError, match="1x1"):
        alg.update(minibatches((3, 32, 32), batch=2))
    alg = make_rsc(input_shape=(3, 32, 32), rsc_mode="both")
    z, y = torch.rand(4, 512, 1, 1), torch.tensor([0, 1, 2, 3])
    assert all(alg.self_challenge(z, y)[0].shape == (4, 512, 1, 1) for _ in range(20))


def test_curriculum_in_steps():
    alg = make_rsc(input_shape=(8,))
    assert alg.batch_percent() == 0.3  # n_steps unknown: the first value
    for step, expected in [(0, 0.3), (49, 0.3), (50, 0.5), (99, 0.5)]:
        alg.on_step_begin(step, 100)
        assert alg.batch_percent() == pytest.approx(expected)
    alg = make_rsc(input_shape=(8,), rsc_batch_interval=1 / 3)
    alg.on_step_begin(89, 90)
    assert alg.batch_percent() == pytest.approx(0.7)
    alg = make_rsc(input_shape=(8,), rsc_batch_interval_steps=10)
    alg.on_step_begin(25, None)
    assert alg.batch_percent() == pytest.approx(0.7)
    alg.on_step_begin(1000, None)
    assert alg.batch_percent() == 1.0
    alg = make_rsc(input_shape=(8,), rsc_batch_increment=0.0, rsc_batch_percent=0.4)
    alg.on_step_begin(99, 100)
    assert alg.batch_percent() == 0.4


@pytest.mark.parametrize("name, value", [("rsc_variant", "paper"), ("rsc_mode", "row"),
                                         ("rsc_drop_strategy", "largest"), ("rsc_spatial_drop", 1.5),
                                         ("rsc_batch_interval_steps", -1)])
def test_bad_hparams_are_one_line_errors(name, value):
    with pytest.raises(UsageError) as error:
        make_rsc(input_shape=(8,), **{name: value})
    assert name in str(error.value) and "\n" not in str(error.value)


# --- the DomainBed variant ---------------------------------------------------------------


def domainbed_reference_step(alg, batches, f_drop_factor, b_drop_factor):
    """DomainBed's RSC update, re-stated with numpy's percentiles on the host, as DomainBed
    computes them."""
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    onehot = F.one_hot(y, K).float()
    features = alg.featurizer(x)
    logits = alg.classifier(features)
    (grad,) = torch.autograd.grad((logits * onehot).sum(), features)
    grad = grad.numpy()
    keep = grad < np.percentile(grad, (1 - f_drop_factor) * 100, axis=1)[:, None]
    with torch.no_grad():
        before = (logits.softmax(1) * onehot).sum(1).numpy()
        after = (alg.classifier(features * torch.from_numpy(keep).float()).softmax(1) * onehot).sum(1).numpy()
    change = before - after
    spared = change < np.percentile(change, (1 - b_drop_factor) * 100)
    mask = torch.from_numpy(keep | spared[:, None]).float()
    loss = F.cross_entropy(alg.classifier(features * mask), y)
    alg.optimizer.zero_grad()
    loss.backward()
    alg.optimizer.step()
    return loss.item()


# the ResNet case is slow (some 18 s on 2 cores); the feature-map path stays in the default suite
# with test_update_trains_on_the_masked_map_and_reaches_the_backbone
@pytest.mark.parametrize("input_shape, f_drop, b_drop", [((16,), 1 / 3, 1 / 3), ((16,), 0.2, 0.45),
                                                           pytest.param((3, 32, 32), 1 / 3, 1 / 3, marks=pytest.mark.slow)])
def test_domainbed_variant_matches_domainbed_to_float32_rounding(input_shape, f_drop, b_drop):
    # the MLP's 256 features put the 2/3 percentile exactly on an element: the hard case
    alg = make_rsc(input_shape, rsc_variant="domainbed", rsc_f_drop_factor=f_drop, rsc_b_drop_factor=b_drop,
                   lr=1e-3)
    reference = copy.deepcopy(alg)
    for step in range(2):
        batches = minibatches(input_shape, batch=5, seed=step)
        ours = alg.update(batches)["loss"]
        theirs = domainbed_reference_step(reference, batches, f_drop, b_drop)
        assert ours == pytest.approx(theirs, rel=1e-5)
    for (name, a), (_, b) in zip(alg.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host synchronisation")
@pytest.mark.parametrize("variant", ["official", "domainbed"])
def test_step_does_not_synchronise_with_the_host(variant):
    alg = make_rsc((3, 64, 64), rsc_variant=variant).cuda()
    batches = [(x.cuda(), y.cuda()) for x, y in minibatches((3, 64, 64))]
    alg.update(batches)  # warm-up: lazy initialisations may synchronise once
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = alg._domainbed_loss(x, y) if variant == "domainbed" else alg._official_loss(x, y)[0]
        alg.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        alg.optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
