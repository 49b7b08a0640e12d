"""URM, RDM, Transfer and ADRMX: one update on a fixed tiny batch against each paper's formula,
written here independently of the modules (loops over samples and domains, torch.cdist, plain
autograd and hand-unrolled SGD steps), and their hparams against DomainBed's registry (defaults
per dataset, and draws recomputed from DomainBed's distributions and seeding scheme).

Gradients are read where a method hands them to an optimizer (`optimizer_step` is wrapped), so
the tests check the objectives rather than an optimizer's arithmetic.
"""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed import algorithms, hparams_registry
from domainbed.algorithms import contract
from domainbed.algorithms.adrmx import supervised_contrastive
from domainbed.errors import UsageError
from domainbed.hparams.checks import check_hparams
from test_domainbed_methods_a import capture_gradients, md5_seed

N_CLASSES, N_DOMAINS, BATCH, DIM = 3, 3, 6, 5


def build(name, **overrides):
    hparams = hparams_registry.default_hparams(name, "Synthetic")
    hparams.update(mlp_width=8, mlp_depth=3, mlp_dropout=0.0, **overrides)
    torch.manual_seed(0)
    algorithm = algorithms.get_algorithm_class(name)((DIM,), N_CLASSES, N_DOMAINS, hparams)
    algorithm.train()
    return algorithm


def minibatches(seed=0, batch=BATCH, n_domains=N_DOMAINS):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, DIM, generator=generator) + e, torch.randint(N_CLASSES, (batch,), generator=generator))
            for e in range(n_domains)]


def pooled(batches):
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])




def gradients(module, loss, prefixes):
    """{name: d loss / d parameter} for `module`'s parameters whose names start with `prefixes`."""
    named = [(n, p) for n, p in module.named_parameters() if n.startswith(prefixes)]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
    return {n: g for (n, _), g in zip(named, grads) if g is not None}


def assert_gradients(captured, expected, atol=1e-6):
    assert set(captured) == set(expected)
    for name, g in expected.items():
        torch.testing.assert_close(captured[name], g, atol=atol, rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------------- URM


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_urm_steps_the_network_then_the_discriminator_towards_uniform_features(smoothing):
    lam = 0.15
    algorithm = build("URM", urm_adv_lambda=lam, urm_discriminator_label_smoothing=smoothing)
    reference, captured, batches = copy.deepcopy(algorithm), capture_gradients(algorithm), minibatches()
    x, y = pooled(batches)

    def bce(logit, target):  # written out: -t log sigmoid(l) - (1 - t) log(1 - sigmoid(l))
        p = torch.sigmoid(logit.squeeze(1))
        return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()

    z = torch.tanh(reference.featurizer(x))
    n = len(z)
    ce = F.cross_entropy(reference.classifier(z), y)
    adversarial = bce(reference.discriminator(z), torch.ones(n))
    loss = ce + lam * adversarial
    torch.manual_seed(3)
    u = 2 * torch.rand(z.shape) - 1  # U[-1, 1): tanh's box
    target_u, target_z = (torch.ones(n), torch.zeros(n)) if not smoothing else (
        1 - smoothing + smoothing * torch.rand(n), smoothing * torch.rand(n))
    disc_loss = bce(reference.discriminator(u), target_u) + lam * bce(reference.discriminator(z.detach()), target_z)

    torch.manual_seed(3)
    stats = algorithm.update(batches)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert stats["disc_loss"] == pytest.approx(disc_loss.item(), rel=1e-5)
    assert_gradients(captured[0], gradients(reference, loss, ("featurizer", "classifier")))
    assert_gradients(captured[1], gradients(reference, disc_loss, ("discriminator",)))
    assert set(algorithm.optimizers()) == {"optimizer", "disc_optimizer"}
    with torch.no_grad():
        torch.testing.assert_close(algorithm.predict(x), algorithm.classifier(torch.tanh(algorithm.featurizer(x))))


def test_urm_sigmoid_matches_the_unit_box_and_identity_is_refused():
    algorithm = build("URM", urm_generator_output="sigmoid", urm_discriminator_optimizer="sgd")
    assert (algorithm.a, algorithm.b) == (0.0, 1.0)
    assert isinstance(algorithm.disc_optimizer, torch.optim.SGD)
    assert algorithm.disc_optimizer.param_groups[0]["momentum"] == 0.9
    hparams = hparams_registry.default_hparams("URM", "PACS") | {"urm_generator_output": "identity"}
    with pytest.raises(UsageError, match="urm_generator_output.*identity"):
        check_hparams("URM", "PACS", hparams)


# ------------------------------------------------------------------------------------- RDM

RDM_GAMMAS = [1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100, 1000]


def mmd2(a, b):
    def k(u, v):
        d2 = torch.cdist(u[:, None], v[:, None]).pow(2)
        return sum(torch.exp(-g * d2) for g in RDM_GAMMAS)
    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


def double(algorithm, batches):
    """In float64 both sides compute the kernel's squared distances exactly enough for gamma up to
    1e3 (in float32, DomainBed's |a|^2 + |b|^2 - 2ab and torch.cdist differ by ~1e-5)."""
    return algorithm.double(), [(x.double(), y) for x, y in batches]


def rdm_objective(network, batches, lam, v):
    risks = [torch.stack([F.cross_entropy(network(x[i:i + 1]), y[i:i + 1]) for i in range(len(y))])
             for x, y in batches]
    means = [r.mean() for r in risks]
    worst = risks[max(range(len(means)), key=lambda e: means[e].item())]
    everything = torch.cat(risks)
    erm = sum(means) / len(means)
    return erm + lam * mmd2(worst, everything) + v * (everything.var() + worst.var()), erm


def test_rdm_is_erm_before_the_anneal_then_matches_the_worst_risk_distribution_with_a_fresh_optimizer():
    lam, v, rdm_lr = 2.0, 0.5, 3e-4
    algorithm = build("RDM", rdm_lambda=lam, variance_weight=v, rdm_lr=rdm_lr, rdm_penalty_anneal_iters=1)
    algorithm, first = double(algorithm, minibatches(seed=0))
    _, second = double(algorithm, minibatches(seed=1))
    captured, batches = capture_gradients(algorithm), [first, second]
    assert algorithm.optimizer.param_groups[0]["lr"] == algorithm.hparams["lr"] != rdm_lr

    reference = copy.deepcopy(algorithm)
    loss, erm = rdm_objective(reference.network, batches[0], 0.0, 0.0)
    stats = algorithm.update(batches[0])
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5) and stats["erm_loss"] == stats["loss"]
    assert_gradients(captured[0], gradients(reference, loss, ("featurizer", "classifier")), atol=1e-6)

    reference.load_state_dict(algorithm.state_dict())
    loss, erm = rdm_objective(reference.network, batches[1], lam, v)
    stats = algorithm.update(batches[1])
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert stats["erm_loss"] == pytest.approx(erm.item(), rel=1e-5)
    assert stats["matching_penalty"] > 0
    assert_gradients(captured[1], gradients(reference, loss, ("featurizer", "classifier")), atol=1e-6)
    assert algorithm.optimizer.param_groups[0]["lr"] == rdm_lr
    assert {int(s["step"]) for s in algorithm.optimizer.state.values()} == {1}  # Adam restarted
    assert algorithm.update_count.item() == 2


def test_rdm_takes_unequal_batches_and_one_domain_matches_itself():
    algorithm, batches = double(build("RDM", rdm_penalty_anneal_iters=0), minibatches())
    batches = [(x[:2 + e], y[:2 + e]) for e, (x, y) in enumerate(batches)]
    loss, _ = rdm_objective(copy.deepcopy(algorithm).network, batches, 5.0, algorithm.hparams["variance_weight"])
    assert algorithm.update(batches)["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert build("RDM", rdm_penalty_anneal_iters=0).update(minibatches(n_domains=1))["matching_penalty"] == 0.0


# -------------------------------------------------------------------------------- Transfer


def sgd_step(module, loss, lr, sign=-1.0):
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p.add_(sign * lr * g)


def gap(featurizer, head, batches):
    risks = [F.cross_entropy(head(featurizer(x)), y).item() for x, y in batches]
    worst, best = risks.index(max(risks)), risks.index(min(risks))
    (xw, yw), (xb, yb) = batches[worst], batches[best]
    return F.cross_entropy(head(featurizer(xw)), yw) - F.cross_entropy(head(featurizer(xb)), yb)


def test_transfer_descends_on_the_risk_and_the_gap_then_ascends_the_adversarial_head_in_the_ball():
    lr, lr_d, t, delta, k = 0.1, 0.5, 0.7, 0.05, 3
    algorithm = build("Transfer", optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=lr, lr_d=lr_d, t_lambda=t,
                      delta=delta, d_steps_per_g=k)
    batches = minibatches()
    x, y = pooled(batches)
    f, h = copy.deepcopy(algorithm.featurizer), copy.deepcopy(algorithm.classifier)
    h_adv = copy.deepcopy(h)  # h' = h at the first update

    loss = F.cross_entropy(h(f(x)), y)
    expected_loss = loss.item()
    sgd_step(torch.nn.ModuleList([f, h]), loss, lr)
    sgd_step(f, t * gap(f, h_adv, batches), lr)  # only g moves: h gets no gradient from gap(h')
    h_adv = copy.deepcopy(h)
    for _ in range(k):
        ascent = t * gap(f, h_adv, batches)
        sgd_step(h_adv, ascent, lr_d, sign=+1.0)
        with torch.no_grad():
            dist = math.sqrt(sum((pa - p).pow(2).sum().item() for pa, p in zip(h_adv.parameters(), h.parameters())))
            if dist > delta:
                for pa, p in zip(h_adv.parameters(), h.parameters()):
                    pa.copy_(p + delta / dist * (pa - p))

    stats = algorithm.update(batches)
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert stats["gap"] == pytest.approx(ascent.item(), rel=1e-5)
    for mine, theirs in [(algorithm.featurizer, f), (algorithm.classifier, h), (algorithm.adv_classifier, h_adv)]:
        for p, q in zip(mine.parameters(), theirs.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=1e-5)
    dist = math.sqrt(sum((pa - p).pow(2).sum().item()
                         for pa, p in zip(algorithm.adv_classifier.parameters(), algorithm.classifier.parameters())))
    assert dist == pytest.approx(delta, rel=1e-5)  # the ascent left the ball and was projected back


def test_transfer_gda_trains_featurizer_and_head_by_plain_sgd():
    algorithm = build("Transfer", gda=True, d_steps_per_g=1)
    optimizer = algorithm.optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["lr"] == algorithm.hparams["lr"]
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in algorithm.network.parameters()}
    before = [p.detach().clone() for p in algorithm.featurizer.parameters()]
    algorithm.update(minibatches())
    assert not all(torch.equal(p, q) for p, q in zip(before, algorithm.featurizer.parameters()))


# ----------------------------------------------------------------------------------- ADRMX


def scl_reference(z, y, d, w=0.5, temperature=0.07):
    """misc.SupConLossLambda's loop over anchors, written from the formula."""
    z = F.normalize(z, dim=1)
    total, anchors = 0.0, 0
    for i in range(len(z)):
        weight = lambda j: w if d[j] == d[i] else 1 - w  # noqa: E731
        term = lambda j: weight(j) * torch.exp(z[i] @ z[j] / temperature)  # noqa: E731
        others = [j for j in range(len(z)) if j != i]
        positives = [j for j in others if y[j] == y[i]]
        if not positives:
            continue
        denominator = sum(term(j) for j in others) + 1e-5
        total = total - sum(torch.log(term(j) / denominator + 1e-5) for j in positives) / len(positives)
        anchors += 1
    return total / (anchors + 1)


def test_adrmx_contrastive_loss_weighs_the_anchors_domain_and_skips_anchors_without_positives():
    generator = torch.Generator().manual_seed(4)
    z = torch.randn(7, 4, generator=generator, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 0, 1])  # sample 4 has no positive
    d = torch.tensor([0, 1, 0, 1, 0, 1, 1])
    for w in (0.5, 0.8):
        expected = scl_reference(z, y, d, w)
        got = supervised_contrastive(z, y, d, w)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(torch.autograd.grad(got, z)[0], torch.autograd.grad(expected, z)[0])


def remix_reference(reference, z_dinv, z_domain, y, quirk):
    """DomainBed's loop: per class, a permutation of its n_c samples, its first two entries as the
    pair (with the quirk: as positions in the batch)."""
    total = 0.0
    for c in range(N_CLASSES):
        indices = torch.where(y == c)[0]
        perm = torch.randperm(len(indices))
        if len(perm) < 2:
            continue
        i, j = (perm[0], perm[1]) if quirk else (indices[perm[0]], indices[perm[1]])
        logits = reference.classifier((z_dinv[i] + z_domain[j])[None])
        total = total + F.cross_entropy(logits, y[i][None])
    return total / N_CLASSES


@pytest.mark.parametrize("quirk", [True, False])
def test_adrmx_alternates_the_discriminator_and_the_disentangling_objective(quirk):
    lams = {"cnt_lambda": 0.6, "dclf_lambda": 0.8, "disc_lambda": 0.75, "rmxd_lambda": 1.3}
    algorithm = build("ADRMX", rmxd_index_quirk=quirk, **lams)  # d_steps_per_g_step 2: updates 1, 3 D's
    reference, captured, batches = copy.deepcopy(algorithm), capture_gradients(algorithm), minibatches()
    x, y = pooled(batches)
    d = torch.arange(N_DOMAINS).repeat_interleave(BATCH)

    # update 1: the discriminator's step on CE(D(z_label - z_domain), d), featurizers untouched
    disc = F.cross_entropy(reference.discriminator(reference.featurizer(x) - reference.featurizer_domain(x)), d)
    featurizer_before = copy.deepcopy(algorithm.featurizer.state_dict())
    stats = algorithm.update(batches)
    assert stats["loss"] == pytest.approx(disc.item(), rel=1e-6)
    assert_gradients(captured[0], gradients(reference, disc, ("discriminator",)))
    assert all(torch.equal(p, featurizer_before[n]) for n, p in algorithm.featurizer.state_dict().items())

    # update 2: featurizers and heads on the whole objective, D untouched
    reference.load_state_dict(algorithm.state_dict())
    z_label, z_domain = reference.featurizer(x), reference.featurizer_domain(x)
    z_dinv = z_label - z_domain
    torch.manual_seed(9)
    remix = remix_reference(reference, z_dinv, z_domain, y, quirk)
    disc = F.cross_entropy(reference.discriminator(z_dinv), d)
    loss = (F.cross_entropy(reference.classifier(z_label), y) + F.cross_entropy(reference.classifier_dinv(z_dinv), y)
            + lams["dclf_lambda"] * F.cross_entropy(reference.classifier_domain(z_domain), d)
            + lams["rmxd_lambda"] * remix
            + lams["cnt_lambda"] * (scl_reference(z_label, y, d) + scl_reference(z_dinv, y, d))
            - lams["disc_lambda"] * disc)
    discriminator_before = copy.deepcopy(algorithm.discriminator.state_dict())
    torch.manual_seed(9)
    stats = algorithm.update(batches)
    assert stats["remix"] == pytest.approx(remix.item(), rel=1e-5) and remix.item() > 0
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    expected = gradients(reference, loss, ("featurizer", "classifier"))
    assert_gradients(captured[1], expected, atol=1e-5)
    assert all(torch.equal(p, discriminator_before[n]) for n, p in algorithm.discriminator.state_dict().items())
    assert set(algorithm.optimizers()) == {"disc_optimizer", "gen_optimizer"}


def test_adrmx_remix_pairs_with_and_without_domainbeds_indexing():
    y = torch.tensor([2, 2, 1, 0, 2, 1, 2, 0, 2, 1])
    counts = torch.bincount(y, minlength=N_CLASSES)
    fixed = build("ADRMX", rmxd_index_quirk=False)
    for _ in range(20):
        i, j = fixed.remix_pairs(y)
        assert torch.equal(y[i], y[j]) and torch.equal(y[i], torch.arange(N_CLASSES)) and bool((i != j).all())
    quirk = build("ADRMX")
    torch.manual_seed(1)
    i, j = quirk.remix_pairs(y)
    torch.manual_seed(1)
    perms = [torch.randperm(int(n))[:2] for n in counts]
    assert i.tolist() == [int(p[0]) for p in perms] and j.tolist() == [int(p[1]) for p in perms]
    assert bool((i < counts).all() and (j < counts).all())
    assert quirk.remix_pairs(torch.tensor([0, 1, 2])) == (None, None)  # no class of two: no pair


# ------------------------------------------------------------------ other settings, resumed


@pytest.mark.parametrize("name, settings", [
    ("RDM", {"rdm_penalty_anneal_iters": 1}),  # the continuation crosses the anneal and its reset
    ("URM", {"urm_discriminator_label_smoothing": 0.2, "urm_discriminator_optimizer": "sgd",
             "urm_generator_output": "relu"}),
    ("Transfer", {"gda": True, "delta": 0.01, "d_steps_per_g": 2}),
    ("ADRMX", {"rmxd_index_quirk": False}),
])
def test_settings_off_the_defaults_keep_the_contract(name, settings):
    subject = contract.subject(name)
    subject = dataclasses.replace(subject, hparams=subject.hparams | settings)
    assert contract.check_update(subject) == []
    assert contract.check_state_round_trip(subject) == []


# --------------------------------------------------------------------------------- hparams




# DomainBed's hparams_registry, typed here from its source: {name: (default, draw)} per dataset
def domainbed_hparams(algorithm, dataset):
    small = dataset in ("Debug28", "RotatedMNIST", "ColoredMNIST")
    if algorithm == "URM":
        return {
            "urm": ("adversarial", lambda r: str(r.choice(["adversarial"]))),
            "urm_adv_lambda": (0.1, lambda r: float(r.uniform(0, 0.2))),
            "urm_discriminator_label_smoothing": (0, lambda r: float(r.uniform(0, 0))),
            "urm_discriminator_optimizer": ("adam", lambda r: str(r.choice(["adam"]))),
            "urm_discriminator_hidden_layers": (1, lambda r: int(r.choice([1, 2, 3]))),
            "urm_generator_output": ("tanh", lambda r: str(r.choice(["tanh", "relu"]))),
            "urm_discriminator_lr": (1e-3, lambda r: 10 ** r.uniform(-5.5, -3.5)) if small
            else (5e-5, lambda r: 10 ** r.uniform(-6, -4.5)),
        }
    if algorithm == "RDM":
        entries = {
            "rdm_lambda": (0.5, lambda r: r.uniform(0.1, 1.0)) if dataset == "DomainNet"
            else (5.0, lambda r: r.uniform(1.0, 10.0)) if dataset in ("PACS", "TerraIncognita")
            else (5.0, lambda r: r.uniform(0.1, 10.0)),
            "rdm_penalty_anneal_iters": (2400, lambda r: int(r.uniform(1500, 3000))) if dataset == "DomainNet"
            else (1500, lambda r: int(r.uniform(800, 2700))),
            "variance_weight": (0.0, lambda r: r.choice([0.0])) if dataset in ("TerraIncognita", "OfficeHome", "DomainNet")
            else (0.004, lambda r: r.uniform(0.001, 0.007)),
            "rdm_lr": (1.5e-5, lambda r: r.uniform(8e-6, 2e-5)),
        }
        if not small:
            entries["batch_size"] = ((40, lambda r: int(r.uniform(30, 60))) if dataset in ("DomainNet", "TerraIncognita")
                                     else (88, lambda r: int(r.uniform(70, 100))))
        return entries
    if algorithm == "Transfer":
        return {
            "t_lambda": (1.0, lambda r: 10 ** r.uniform(-2, 1)),
            "delta": (2.0, lambda r: r.uniform(0.1, 3.0)),
            "d_steps_per_g": (10, lambda r: int(r.choice([1, 2, 5]))),
            "weight_decay_d": (0.0, lambda r: 10 ** r.uniform(-6, -2)),
            "gda": (False, lambda r: True),
            "beta1": (0.5, lambda r: r.choice([0.0, 0.5])),
            "lr_d": (1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5)),
        }
    return {  # ADRMX
        "cnt_lambda": (1.0, lambda r: r.choice([1.0])),
        "dclf_lambda": (1.0, lambda r: r.choice([1.0])),
        "disc_lambda": (0.75, lambda r: r.choice([0.75])),
        "rmxd_lambda": (1.0, lambda r: r.choice([1.0])),
        "d_steps_per_g_step": (2, lambda r: r.choice([2])),
        "beta1": (0.5, lambda r: r.choice([0.5])),
        "mlp_width": (256, lambda r: r.choice([256])),
        "mlp_depth": (9, lambda r: int(r.choice([8, 9, 10]))),
        "mlp_dropout": (0.0, lambda r: r.choice([0])),
        "lr": (3e-3, lambda r: r.choice([5e-4, 1e-3, 2e-3, 3e-3])) if small
        else (3e-5, lambda r: r.choice([2e-5, 3e-5, 4e-5, 5e-5])),
    }


@pytest.mark.parametrize("name", ["URM", "RDM", "Transfer", "ADRMX"])
@pytest.mark.parametrize("dataset", ["PACS", "RotatedMNIST", "TerraIncognita", "OfficeHome", "DomainNet"])
def test_defaults_and_seeded_draws_are_domainbeds(name, dataset):
    expected = domainbed_hparams(name, dataset)
    defaults = hparams_registry.default_hparams(name, dataset)
    assert {k: defaults[k] for k in expected} == {k: default for k, (default, _) in expected.items()}
    for hparams_seed, trial_seed in [(1, 0), (3, 2)]:
        seed = md5_seed(hparams_seed, trial_seed)
        drawn = hparams_registry.search_hparams(name, dataset, hparams_seed, trial_seed)
        for key, (_, draw) in expected.items():
            assert drawn[key] == draw(np.random.RandomState(md5_seed(seed, key))), (key, hparams_seed)
