"""One update of each SWAD-harness baseline against its paper's formula, computed here
independently (closed forms, or autograd on the loss written out), on a fixed tiny batch.

Gradients are read where the method hands them to its optimizer (`optimizer_step` is wrapped),
so the tests check the objective, not an optimizer's arithmetic; MLDG is checked against a
hand-unrolled inner and outer step.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from domainbed import algorithms, hparams_registry
from domainbed.algorithms.irm import irm_penalty

N_CLASSES, N_DOMAINS, BATCH, DIM = 3, 2, 6, 5


def _build(name, input_shape=(DIM,), **overrides):
    hparams = hparams_registry.default_hparams(name, "Synthetic")
    hparams.update(mlp_width=8, mlp_depth=3, backbone="resnet18", pretrained=False, **overrides)
    torch.manual_seed(0)
    algorithm = algorithms.get_algorithm_class(name)(input_shape, N_CLASSES, N_DOMAINS, hparams)
    algorithm.train()
    return algorithm


def _minibatches(input_shape=(DIM,), seed=0, n_domains=N_DOMAINS):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, *input_shape, generator=generator), torch.randint(N_CLASSES, (BATCH,), generator=generator))
            for _ in range(n_domains)]


def _capture_gradients(algorithm):
    """[{parameter name: grad}] at every optimizer_step, in order."""
    names = {id(p): n for n, p in algorithm.named_parameters()}
    captured = []
    step = algorithm.optimizer_step

    def recording_step(optimizer):
        captured.append({names[id(p)]: p.grad.detach().clone() for group in optimizer.param_groups
                         for p in group["params"] if p.grad is not None and id(p) in names})
        step(optimizer)

    algorithm.optimizer_step = recording_step
    return captured


def _expected_gradients(reference, loss):
    named = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g for (n, _), g in zip(named, grads) if g is not None}


def _setting(name, **hparams):
    """The method, an untouched copy for the reference computation, its optimizer's captured
    gradients, and the fixed minibatches."""
    algorithm = _build(name, **hparams)
    reference = copy.deepcopy(algorithm)
    return algorithm, reference, _capture_gradients(algorithm), _minibatches()


def _seed(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


def _assert_update_is(algorithm, minibatches, seed, loss, captured, reference):
    """One update under `seed` reports `loss` and hands the optimizer its gradients."""
    _seed(seed)
    stats = algorithm.update(minibatches)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    _assert_gradients(captured[0], _expected_gradients(reference, loss))


def _assert_gradients(captured, expected, atol=1e-6):
    assert captured.keys() >= {n for n, g in expected.items() if g.abs().sum() > 0}
    for name, g in expected.items():
        torch.testing.assert_close(captured.get(name, torch.zeros_like(g)), g, atol=atol, rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------------- IRM


def test_irm_penalty_is_the_product_of_the_half_batch_scale_gradients():
    logits = torch.randn(8, N_CLASSES, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def dR_ds(l, t):  # d/ds CE(s * l, t) at s = 1: mean_i (softmax(l_i) . l_i - l_{i, t_i})
        return ((l.softmax(1) * l).sum(1) - l.gather(1, t[:, None]).squeeze(1)).mean()

    expected = dR_ds(logits[::2], y[::2]) * dR_ds(logits[1::2], y[1::2])
    torch.testing.assert_close(irm_penalty(logits, y), expected)


def test_irm_update_is_nll_plus_annealed_penalty_and_resets_the_optimizer_at_the_anneal_end():
    algorithm = _build("IRM", irm_penalty_anneal_iters=1, irm_lambda=100.0)
    reference = copy.deepcopy(algorithm)
    captured = _capture_gradients(algorithm)
    batches = [_minibatches(seed=s) for s in (0, 1)]

    def objective(model, minibatches, lam):
        nll = pen = 0.0
        for x, y in minibatches:
            logits = model.predict(x)
            nll = nll + F.cross_entropy(logits, y)
            pen = pen + irm_penalty(logits, y)
        return (nll + lam * pen) / len(minibatches), pen / len(minibatches)

    loss, penalty = objective(reference, batches[0], 1.0)  # lambda_t = 1 during the anneal
    stats = algorithm.update(batches[0])
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert stats["penalty"] == pytest.approx(penalty.item(), rel=1e-6)
    _assert_gradients(captured[0], _expected_gradients(reference, loss))

    reference.load_state_dict(algorithm.state_dict())
    loss, _ = objective(reference, batches[1], 100.0)
    algorithm.update(batches[1])
    _assert_gradients(captured[1], _expected_gradients(reference, loss), atol=1e-5)
    # the Adam moments restarted at update 1: every step count is 1 again, not 2
    assert {int(s["step"]) for s in algorithm.optimizer.state.values()} == {1}


# ------------------------------------------------------------------------------------ VREx


def test_vrex_update_is_mean_risk_plus_lambda_times_their_population_variance():
    algorithm, reference, captured, minibatches = _setting("VREx", vrex_penalty_anneal_iters=0, vrex_lambda=10.0)
    risks = torch.stack([F.cross_entropy(reference.predict(x), y) for x, y in minibatches])
    loss = risks.mean() + 10.0 * torch.var(risks, correction=0)
    stats = algorithm.update(minibatches)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    _assert_gradients(captured[0], _expected_gradients(reference, loss))


# -------------------------------------------------------------------------------- GroupDRO


def test_group_dro_weights_are_the_exponentiated_risks_normalised():
    eta = 0.5
    algorithm, reference, captured, minibatches = _setting("GroupDRO", groupdro_eta=eta)
    risks = torch.stack([F.cross_entropy(reference.predict(x), y) for x, y in minibatches])
    q = torch.softmax(eta * risks.detach(), 0)  # from q = 1: q_e exp(eta R_e) / sum
    loss = (q * risks).sum()
    algorithm.update(minibatches)
    torch.testing.assert_close(algorithm.q, q)
    _assert_gradients(captured[0], _expected_gradients(reference, loss))


def test_group_dro_updates_a_float64_model_in_float64():
    eta = 0.5
    algorithm, reference, captured, minibatches = _setting("GroupDRO", groupdro_eta=eta)
    algorithm.double()
    reference.double()
    minibatches = [(x.double(), y) for x, y in minibatches]
    # DomainBed's GroupDRO.update, from q = 1
    risks = torch.stack([F.cross_entropy(reference.predict(x), y) for x, y in minibatches])
    q = torch.ones(N_DOMAINS, dtype=torch.float64) * torch.exp(eta * risks.detach())
    q = q / q.sum()
    loss = torch.dot(risks, q)
    stats = algorithm.update(minibatches)
    assert algorithm.q.dtype == torch.float64
    torch.testing.assert_close(algorithm.q, q)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-12)
    _assert_gradients(captured[0], _expected_gradients(reference, loss), atol=1e-12)


# ------------------------------------------------------------------------ Mixup, OrgMixup


def test_mixup_mixes_each_domain_with_the_next_in_a_random_cycle():
    algorithm = _build("Mixup", mixup_alpha=0.4)
    reference = copy.deepcopy(algorithm)
    captured = _capture_gradients(algorithm)
    minibatches = _minibatches(n_domains=3)
    _seed(5)
    order = torch.randperm(3).tolist()
    loss = 0.0
    for k in range(3):
        (x_i, y_i), (x_j, y_j) = minibatches[order[k]], minibatches[order[(k + 1) % 3]]
        lam = np.random.beta(0.4, 0.4)
        logits = reference.predict(lam * x_i + (1 - lam) * x_j)
        loss = loss + lam * F.cross_entropy(logits, y_i) + (1 - lam) * F.cross_entropy(logits, y_j)
    loss = loss / 3
    _assert_update_is(algorithm, minibatches, 5, loss, captured, reference)


def test_org_mixup_mixes_the_pooled_batch_with_a_permutation_of_itself():
    algorithm, reference, captured, minibatches = _setting("OrgMixup", mixup_alpha=0.4)
    x, y = torch.cat([m[0] for m in minibatches]), torch.cat([m[1] for m in minibatches])
    _seed(3)
    pi = torch.randperm(len(x))
    lam = np.random.beta(0.4, 0.4)
    logits = reference.predict(lam * x + (1 - lam) * x[pi])
    loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[pi])
    _assert_update_is(algorithm, minibatches, 3, loss, captured, reference)


# ---------------------------------------------------------------------------------- CutMix


def test_cutmix_pastes_a_box_and_weighs_the_labels_by_its_area():
    shape = (3, 32, 32)
    algorithm = _build("CutMix", input_shape=shape)
    algorithm.eval()  # BatchNorm in eval so the reference's forward sees the same statistics
    reference = copy.deepcopy(algorithm)
    captured = _capture_gradients(algorithm)
    minibatches = _minibatches(shape)
    x, y = torch.cat([m[0] for m in minibatches]), torch.cat([m[1] for m in minibatches])
    original = x.clone()
    np.random.seed(7)
    torch.manual_seed(7)
    assert np.random.rand(1) < 1.0
    lam = np.random.beta(1.0, 1.0)
    pi = torch.randperm(len(x))
    cut_h, cut_w = int(32 * np.sqrt(1 - lam)), int(32 * np.sqrt(1 - lam))
    cy, cx = np.random.randint(32), np.random.randint(32)
    t, b = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, 32)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, 32)
    mixed = x.clone()
    mixed[:, :, t:b, left:right] = x[pi][:, :, t:b, left:right]
    area = (b - t) * (right - left) / 32 ** 2
    logits = reference.predict(mixed)
    loss = (1 - area) * F.cross_entropy(logits, y) + area * F.cross_entropy(logits, y[pi])
    np.random.seed(7)
    torch.manual_seed(7)
    stats = algorithm.update(minibatches)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    _assert_gradients(captured[0], _expected_gradients(reference, loss), atol=1e-5)
    assert torch.equal(torch.cat([m[0] for m in minibatches]), original)  # the caller's batch is untouched


# ------------------------------------------------------------------------------------ MLDG


def test_mldg_matches_a_hand_unrolled_first_order_meta_step():
    lr, beta = 0.1, 0.7
    algorithm = _build("MLDG", optimizer="sgd", lr=lr, weight_decay=0.0, mldg_beta=beta)
    theta = {n: p.detach().clone().requires_grad_() for n, p in algorithm.network.named_parameters()}
    network = copy.deepcopy(algorithm.network)
    minibatches = _minibatches(n_domains=3)

    def loss_at(params, x, y):
        return F.cross_entropy(functional_call(network, params, (x,)), y)

    torch.manual_seed(11)
    order = torch.randperm(3).tolist()
    total = {n: torch.zeros_like(p) for n, p in theta.items()}
    objective = 0.0
    for k in range(3):
        (x_i, y_i), (x_j, y_j) = minibatches[order[k]], minibatches[order[(k + 1) % 3]]
        F_i = loss_at(theta, x_i, y_i)
        g_i = dict(zip(theta, torch.autograd.grad(F_i, list(theta.values()))))
        # the inner optimizer's first step: SGD with momentum starts with buffer = g, so theta - lr g
        theta_prime = {n: (theta[n] - lr * g_i[n]).detach().requires_grad_() for n in theta}
        G_j = loss_at(theta_prime, x_j, y_j)
        g_j = dict(zip(theta_prime, torch.autograd.grad(G_j, list(theta_prime.values()))))
        for n in theta:
            total[n] += g_i[n] / 3 + beta * g_j[n] / 3
        objective += F_i.item() + beta * G_j.item()
    expected = {n: theta[n].detach() - lr * total[n] for n in theta}

    torch.manual_seed(11)
    stats = algorithm.update(minibatches)
    assert stats["loss"] == pytest.approx(objective / 3, rel=1e-6)
    for n, p in algorithm.network.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], atol=1e-6, rtol=1e-5, msg=n)


# ---------------------------------------------------------------------------- DANN, CDANN


def _disc_loss(reference, z, y, d, conditional, grad_penalty):
    disc_input = z + reference.class_embeddings(y) if conditional else z
    out = reference.discriminator(disc_input)
    per_sample = F.cross_entropy(out, d, reduction="none")
    if conditional:  # weights 1 / (n_classes * count of the sample's class)
        counts = torch.bincount(y, minlength=N_CLASSES).float()
        loss = (per_sample / (counts[y] * N_CLASSES)).sum()
    else:
        loss = per_sample.mean()
    (grad,) = torch.autograd.grad(per_sample.sum(), disc_input, create_graph=True)
    return loss + grad_penalty * (grad ** 2).sum(1).mean()


@pytest.mark.parametrize("name, conditional", [("DANN", False), ("CDANN", True)])
def test_dann_alternates_a_generator_and_a_discriminator_step_on_the_adversarial_loss(name, conditional):
    lam, gp = 0.3, 0.5
    algorithm, reference, captured, minibatches = _setting(name, d_steps_per_g_step=1, grad_penalty=gp, **{"lambda": lam})
    x, y = torch.cat([m[0] for m in minibatches]), torch.cat([m[1] for m in minibatches])
    d = torch.arange(N_DOMAINS).repeat_interleave(BATCH)

    # update 1 (odd): generator step on CE - lambda * L_D, over the featurizer and the head only
    z = reference.featurizer(x)
    disc = _disc_loss(reference, z, y, d, conditional, gp)
    gen_loss = F.cross_entropy(reference.classifier(z), y) - lam * disc
    gen_before = {n: p.detach().clone() for n, p in algorithm.named_parameters() if n.startswith("discriminator")}
    stats = algorithm.update(minibatches)
    assert stats["gen_loss"] == pytest.approx(gen_loss.item(), rel=1e-5)
    expected = {n: g for n, g in _expected_gradients(reference, gen_loss).items()
                if n.startswith(("featurizer", "classifier"))}
    _assert_gradients(captured[0], expected, atol=1e-5)
    assert all(torch.equal(p, gen_before[n]) for n, p in algorithm.named_parameters() if n in gen_before)

    # update 2 (even): discriminator step on L_D, over D and the class embeddings only
    reference.load_state_dict(algorithm.state_dict())
    disc = _disc_loss(reference, reference.featurizer(x), y, d, conditional, gp)
    featurizer_before = {n: p.detach().clone() for n, p in algorithm.featurizer.named_parameters()}
    stats = algorithm.update(minibatches)
    assert stats["disc_loss"] == pytest.approx(disc.item(), rel=1e-5)
    expected = {n: g for n, g in _expected_gradients(reference, disc).items()
                if n.startswith(("discriminator", "class_embeddings"))}
    _assert_gradients(captured[1], expected, atol=1e-5)
    assert all(torch.equal(p, featurizer_before[n]) for n, p in algorithm.featurizer.named_parameters())
    assert set(algorithm.optimizers()) == {"disc_optimizer", "gen_optimizer"}


# ------------------------------------------------------------------------------------- MTL


def test_mtl_feeds_the_head_the_moving_mean_feature_of_the_domain():
    ema = 0.9
    algorithm, reference, captured, minibatches = _setting("MTL", mtl_ema=ema)
    loss, means = 0.0, []
    for x, y in minibatches:
        z = reference.featurizer(x)
        mu = ema * z.mean(0)  # (1 - ema) * mu_e with mu_e = 0 at the start
        means.append(mu.detach())
        loss = loss + F.cross_entropy(reference.classifier(torch.cat([z, mu.expand_as(z)], 1)), y)
    stats = algorithm.update(minibatches)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    _assert_gradients(captured[0], _expected_gradients(reference, loss))
    torch.testing.assert_close(algorithm.embeddings, torch.stack(means))

    algorithm.eval()  # a training domain in eval reads mu_e and leaves it
    x = minibatches[0][0]
    with torch.no_grad():
        z = algorithm.featurizer(x)
        expected = algorithm.classifier(torch.cat([z, algorithm.embeddings[0].expand_as(z)], 1))
        torch.testing.assert_close(algorithm.predict(x, env=0), expected)
        unseen = algorithm.classifier(torch.cat([z, z.mean(0).expand_as(z)], 1))
        torch.testing.assert_close(algorithm.predict(x), unseen)
    torch.testing.assert_close(algorithm.embeddings, torch.stack(means))


# ---------------------------------------------------------------------------------- SagNet


def test_sagnet_randomize_swaps_style_or_content_between_samples():
    from domainbed.algorithms.sagnet import EPS, randomize

    z = torch.randn(6, 10, generator=torch.Generator().manual_seed(2)) * 3 + 1
    mean, var = z.mean(1, keepdim=True), z.var(1, keepdim=True)
    content = (z - mean) / (var + EPS).sqrt()
    torch.manual_seed(4)
    a, pi = torch.rand(6, 1), torch.randperm(6)
    torch.manual_seed(4)
    styled = randomize(z, "style")
    mixed_mean, mixed_var = a * mean + (1 - a) * mean[pi], a * var + (1 - a) * var[pi]
    torch.testing.assert_close(styled, content * (mixed_var + EPS).sqrt() + mixed_mean)
    torch.manual_seed(4)
    swapped = randomize(z, "content")
    torch.testing.assert_close(swapped, content[pi] * (var + EPS).sqrt() + mean)


def test_sagnet_update_takes_the_content_style_and_adversarial_steps():
    from domainbed.algorithms.sagnet import randomize

    w_adv = 0.3
    algorithm, reference, captured, minibatches = _setting("SagNet", sag_w_adv=w_adv)
    x, y = torch.cat([m[0] for m in minibatches]), torch.cat([m[1] for m in minibatches])
    torch.manual_seed(9)
    loss_c = F.cross_entropy(reference.classifier(randomize(reference.featurizer(x), "style")), y)
    torch.manual_seed(9)
    stats = algorithm.update(minibatches)
    assert stats["loss"] == pytest.approx(loss_c.item(), rel=1e-6)
    expected = _expected_gradients(reference, loss_c)
    # steps: featurizer and content head on loss_c, style head on loss_s, featurizer on loss_adv
    assert [sorted({n.split(".")[0] for n in c}) for c in captured] == [
        ["featurizer"], ["classifier"], ["style_classifier"], ["featurizer"]]
    _assert_gradients({**captured[0], **captured[1]}, expected)
    # -mean_k log p_k >= log K (Jensen), with equality for a uniform style head
    assert stats["loss_adv"] >= w_adv * np.log(N_CLASSES) - 1e-6


# ------------------------------------------------------------------------------- Mixstyle2


def test_mixstyle2_pairs_half_batches_of_consecutive_domains_and_mixes_across_halves():
    from domainbed.algorithms.mixstyle2 import CrossDomainMixStyle, pair_batches

    minibatches = [(torch.arange(6) + 10 * d, torch.arange(6) + 10 * d) for d in range(3)]
    pairs = pair_batches(minibatches)
    assert [p[0].tolist() for p in pairs] == [[0, 1, 2, 13, 14, 15], [10, 11, 12, 23, 24, 25], [20, 21, 22, 3, 4, 5]]
    assert all(torch.equal(x, y) for x, y in pairs)

    mixer = CrossDomainMixStyle(p=1.0, alpha=0.1)
    for seed in range(5):
        torch.manual_seed(seed)
        perm = mixer.partners(8)
        assert sorted(perm.tolist()) == list(range(8))
        assert all(p >= 4 for p in perm[:4].tolist()) and all(p < 4 for p in perm[4:].tolist())

    # the mixed statistics: instance i's mean becomes lam_i mu_i + (1 - lam_i) mu_perm(i)
    x = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(0)) + torch.arange(8.0).view(8, 1, 1, 1)
    torch.manual_seed(1)
    out = mixer(x)
    torch.manual_seed(1)
    torch.rand(())
    lam = torch.distributions.Beta(0.1, 0.1).sample((8, 1, 1, 1))
    perm = mixer.partners(8)
    mu = x.mean((2, 3), keepdim=True)
    torch.testing.assert_close(out.mean((2, 3), keepdim=True), lam * mu + (1 - lam) * mu[perm], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- ARM


def test_arm_appends_the_mean_context_map_of_each_domain_group():
    shape = (3, 16, 16)
    algorithm = _build("ARM", input_shape=shape, batch_size=BATCH)
    algorithm.eval()
    minibatches = _minibatches(shape)
    x = torch.cat([m[0] for m in minibatches])
    with torch.no_grad():
        context = algorithm.context_net(x)
        means = [context[:BATCH].mean(0, keepdim=True), context[BATCH:].mean(0, keepdim=True)]
        expected = algorithm.network(torch.cat([x, torch.cat([means[0].expand(BATCH, -1, -1, -1),
                                                              means[1].expand(BATCH, -1, -1, -1)])], 1))
        torch.testing.assert_close(algorithm.predict(x), expected)
        # a batch that is not a multiple of the support size is one group
        odd = x[:5]
        one = algorithm.network(torch.cat([odd, algorithm.context_net(odd).mean(0, keepdim=True).expand(5, -1, -1, -1)], 1))
        torch.testing.assert_close(algorithm.predict(odd), one)
    trained = {id(p) for g in algorithm.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in trained for p in algorithm.context_net.parameters())
