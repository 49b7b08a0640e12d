"""IB_ERM, IB_IRM, CAD, CondCAD and TRM: one update on a fixed tiny batch against each paper's
formula, computed here independently (closed-form gradients, Hessians and variances, loops over
samples), their schedules, and their hparams against DomainBed's defaults and random draws.

Gradients are read where the method hands them to its base optimizer (`optimizer_step` is
wrapped), so the tests check the objective, not an optimizer's arithmetic.
"""

import copy
import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed import algorithms, hparams_registry
from domainbed.algorithms import contract
from domainbed.algorithms.trm import neumann_inverse_hvp
from domainbed.errors import UsageError
from domainbed.hparams.checks import check_hparams

N_CLASSES, N_DOMAINS, BATCH, DIM = 3, 3, 6, 5
NAMES = ["IB_ERM", "IB_IRM", "CAD", "CondCAD", "TRM"]


def floats(stats: dict) -> dict:
    """An update's stats (0-dim tensors, read on the host only when logged) as python floats."""
    return {key: float(value) for key, value in stats.items()}


def build(name, **overrides):
    hparams = hparams_registry.default_hparams(name, "Synthetic")
    hparams.update(mlp_width=8, mlp_depth=3, mlp_dropout=0.0, **overrides)
    torch.manual_seed(0)
    algorithm = algorithms.get_algorithm_class(name)((DIM,), N_CLASSES, N_DOMAINS, hparams)
    algorithm.train()
    return algorithm


def minibatches(seed=0, labels=None):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, DIM, generator=generator) + e,
             torch.randint(N_CLASSES, (BATCH,), generator=generator) if labels is None else labels[e])
            for e in range(N_DOMAINS)]


def capture_gradients(algorithm):
    """[{parameter name: grad}] at every optimizer_step, in order."""
    names = {id(p): n for n, p in algorithm.named_parameters()}
    captured = []
    step = algorithm.optimizer_step

    def recording_step(optimizer):
        captured.append({names[id(p)]: p.grad.detach().clone() for group in optimizer.param_groups
                         for p in group["params"] if p.grad is not None})
        step(optimizer)

    algorithm.optimizer_step = recording_step
    return captured


def assert_gradients_of(captured, reference, loss, atol=1e-6):
    named = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    expected = {n: g for (n, _), g in zip(named, grads) if g is not None}
    assert expected and captured.keys() >= {n for n, g in expected.items() if g.abs().sum() > 0}
    for name, g in expected.items():
        torch.testing.assert_close(captured.get(name, torch.zeros_like(g)), g, atol=atol, rtol=1e-5, msg=name)


def setting(name, **overrides):
    algorithm = build(name, **overrides)
    return algorithm, copy.deepcopy(algorithm), capture_gradients(algorithm)


def domain_outputs(reference, batches):
    z = [reference.featurizer(x) for x, _ in batches]
    return z, [reference.classifier(z_e) for z_e in z]


def variance(z):
    """The unbiased variance of every feature over the batch, averaged over the features."""
    return (((z - z.mean(0)) ** 2).sum(0) / (len(z) - 1)).mean()


def dR_ds(logits, y):
    """d/ds CE(s * logits, y) at s = 1: mean_i (softmax(l_i) . l_i - l_{i, y_i})."""
    return ((logits.softmax(1) * logits).sum(1) - logits.gather(1, y[:, None]).squeeze(1)).mean()


def irmv1(logits, y):
    return dR_ds(logits[::2], y[::2]) * dR_ds(logits[1::2], y[1::2])


def adam_steps(algorithm):
    return {int(state["step"]) for state in algorithm.optimizer.state.values()}


# --------------------------------------------------------------------------------- IB_ERM / IB_IRM


def test_ib_erm_is_mean_risk_plus_lambda_times_the_features_variance():
    algorithm, reference, captured = setting("IB_ERM", ib_penalty_anneal_iters=0, ib_lambda=10.0)
    batches = minibatches()
    z, logits = domain_outputs(reference, batches)
    nll = sum(F.cross_entropy(l, y) for l, (_, y) in zip(logits, batches)) / N_DOMAINS
    V = sum(variance(z_e) for z_e in z) / N_DOMAINS
    stats = floats(algorithm.update(batches))
    assert stats["nll"] == pytest.approx(nll.item(), rel=1e-6)
    assert stats["IB_penalty"] == pytest.approx(V.item(), rel=1e-6) and V.item() > 1e-3
    assert stats["loss"] == pytest.approx((nll + 10.0 * V).item(), rel=1e-6)
    assert_gradients_of(captured[0], reference, nll + 10.0 * V)


def test_ib_erm_has_no_bottleneck_during_its_anneal_and_restarts_adam_when_it_ends():
    algorithm, reference, captured = setting("IB_ERM", ib_penalty_anneal_iters=1, ib_lambda=10.0, optimizer="adam")
    batches = minibatches()
    z, logits = domain_outputs(reference, batches)
    nll = sum(F.cross_entropy(l, y) for l, (_, y) in zip(logits, batches)) / N_DOMAINS
    stats = floats(algorithm.update(batches))
    assert stats["loss"] == pytest.approx(stats["nll"]) and stats["IB_penalty"] > 0
    assert_gradients_of(captured[0], reference, nll)
    algorithm.update(minibatches(1))
    assert adam_steps(algorithm) == {1}  # the moments restarted at update 1
    stats = floats(algorithm.update(minibatches(2)))
    assert adam_steps(algorithm) == {2}
    assert stats["loss"] == pytest.approx(stats["nll"] + 10.0 * stats["IB_penalty"], rel=1e-6)


def test_ib_irm_adds_the_irmv1_penalty_and_the_bottleneck():
    algorithm, reference, captured = setting("IB_IRM", irm_penalty_anneal_iters=0, irm_lambda=3.0,
                                             ib_penalty_anneal_iters=0, ib_lambda=10.0)
    batches = minibatches()
    z, logits = domain_outputs(reference, batches)
    nll = sum(F.cross_entropy(l, y) for l, (_, y) in zip(logits, batches)) / N_DOMAINS
    P = sum(irmv1(l, y) for l, (_, y) in zip(logits, batches)) / N_DOMAINS
    V = sum(variance(z_e) for z_e in z) / N_DOMAINS
    loss = nll + 3.0 * P + 10.0 * V
    stats = floats(algorithm.update(batches))
    assert stats["IRM_penalty"] == pytest.approx(P.item(), rel=1e-5) and abs(P.item()) > 1e-6
    assert stats["IB_penalty"] == pytest.approx(V.item(), rel=1e-6)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert_gradients_of(captured[0], reference, loss, atol=1e-5)


def test_ib_irm_weighs_irm_by_one_and_the_bottleneck_by_zero_before_their_anneals_and_restarts_at_each_end():
    algorithm, reference, captured = setting("IB_IRM", irm_penalty_anneal_iters=1, irm_lambda=3.0,
                                             ib_penalty_anneal_iters=2, ib_lambda=10.0, optimizer="adam")
    batches = minibatches()
    _, logits = domain_outputs(reference, batches)
    nll = sum(F.cross_entropy(l, y) for l, (_, y) in zip(logits, batches)) / N_DOMAINS
    P = sum(irmv1(l, y) for l, (_, y) in zip(logits, batches)) / N_DOMAINS
    algorithm.update(batches)
    assert_gradients_of(captured[0], reference, nll + P, atol=1e-5)
    steps = []
    for seed in (1, 2, 3):
        stats = floats(algorithm.update(minibatches(seed)))
        steps.append(adam_steps(algorithm))
    assert steps == [{1}, {1}, {2}]  # restarts at update 1 (IRM's anneal) and 2 (the bottleneck's)
    expected = stats["nll"] + 3.0 * stats["IRM_penalty"] + 10.0 * stats["IB_penalty"]
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- CAD / CondCAD


def bottleneck_reference(u, y, d, tau, conditional, flipped):
    """The mean of l_i over the rows with a term, by loops over samples (DomainBed's row rule)."""
    losses = []
    for i in range(len(y)):
        K = [k for k in range(len(y)) if k != i and (not conditional or y[k] == y[i])]
        terms = [j for j in K if (d[j] != d[i]) == flipped]
        has_label_partner = any(y[k] == y[i] for k in range(len(y)) if k != i)
        if not terms or not has_label_partner:
            continue
        s = [u[i] @ u[j] / tau for j in range(len(y))]
        p = sum(torch.exp(s[j]) for j in terms) / sum(torch.exp(s[k]) for k in K)
        losses.append((-1 if flipped else 1) * tau / 0.07 * torch.log(p))
    return sum(losses) / len(losses) if losses else torch.tensor(0.0)


# one sample of domain 0 has a label no other sample has: unconditional CAD leaves its row out
LABELS = [torch.tensor([0, 1, 2, 0, 1, 1]), torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([1, 0, 1, 0, 0, 0])]


@pytest.mark.parametrize("name", ["CAD", "CondCAD"])
@pytest.mark.parametrize("flipped", [True, False])
@pytest.mark.parametrize("normalized", [False, True])
def test_cad_is_cross_entropy_plus_lambda_times_the_contrastive_domain_bottleneck(name, flipped, normalized):
    tau = 0.5 if not normalized else 0.1  # unnormalised features: a mild temperature keeps p_ij in float range
    algorithm, reference, captured = setting(name, lmbda=0.7, temperature=tau, is_flipped=flipped,
                                             is_normalized=normalized)
    batches = minibatches(labels=LABELS)
    x, y = torch.cat([x for x, _ in batches]), torch.cat(LABELS)
    d = torch.arange(N_DOMAINS).repeat_interleave(BATCH)
    z = reference.featurizer(x)
    u = F.normalize(z, dim=1) if normalized else z
    L_bn = bottleneck_reference(u, y.tolist(), d.tolist(), tau, name == "CondCAD", flipped)
    clf = F.cross_entropy(reference.classifier(z), y)
    stats = floats(algorithm.update(batches))
    assert stats["bn_loss"] == pytest.approx(L_bn.item(), rel=1e-5) and L_bn.item() != 0
    assert stats["clf_loss"] == pytest.approx(clf.item(), rel=1e-6)
    assert stats["loss"] == stats["total_loss"] == pytest.approx((clf + 0.7 * L_bn).item(), rel=1e-5)
    assert_gradients_of(captured[0], reference, clf + 0.7 * L_bn, atol=1e-5)


def test_cond_cad_without_a_same_label_pair_across_domains_is_cross_entropy():
    labels = [torch.full((BATCH,), e) for e in range(N_DOMAINS)]  # each domain its own label
    algorithm, reference, captured = setting("CondCAD", lmbda=0.7)
    batches = minibatches(labels=labels)
    x, y = torch.cat([x for x, _ in batches]), torch.cat(labels)
    stats = floats(algorithm.update(batches))
    assert stats["bn_loss"] == 0.0
    assert_gradients_of(captured[0], reference, F.cross_entropy(reference.predict(x), y))


def test_cad_with_a_projection_trains_it_with_the_rest():
    """DomainBed's is_project=True stops on an undefined name; here the head is built and trained."""
    algorithm, reference, captured = setting("CAD", lmbda=0.7, is_project=True, is_normalized=True)
    assert [m.out_features for m in algorithm.project if isinstance(m, torch.nn.Linear)] == [8, 128]
    optimized = {id(p) for group in algorithm.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in algorithm.project.parameters())
    batches = minibatches(labels=LABELS)
    x, y = torch.cat([x for x, _ in batches]), torch.cat(LABELS)
    d = torch.arange(N_DOMAINS).repeat_interleave(BATCH)
    z = reference.featurizer(x)
    u = F.normalize(reference.project(z), dim=1)
    loss = F.cross_entropy(reference.classifier(z), y) + 0.7 * bottleneck_reference(u, y.tolist(), d.tolist(), 0.1,
                                                                                    False, True)
    algorithm.update(batches)
    assert_gradients_of(captured[0], reference, loss, atol=1e-5)
    assert "project.0.weight" in captured[0]


# ---------------------------------------------------------------------------------------------- TRM


def softmax_regression_gradient(W, b, z, y):
    """d CE(z W^T + b, y) / dW and / db in closed form, differentiable in z."""
    G = (z @ W.T + b).softmax(1) - F.one_hot(y, W.shape[0]).to(z.dtype)
    return G.T @ z / len(y), G.mean(0)


def softmax_regression_hessian(W, b, z):
    """The Hessian of CE(z W^T + b, y) in W (flattened row-major): mean_n (diag p - p p^T) (x) z z^T."""
    p = (z @ W.T + b).softmax(1)
    return sum(torch.kron(torch.diag(p_n) - torch.outer(p_n, p_n), torch.outer(z_n, z_n)) for p_n, z_n in zip(p, z)) / len(z)


def neumann_reference(H, v, terms=10, bound=10.0):
    """DomainBed's series (I - H) v + sum_{k=1}^{K} (I - H)^k v, stopped after the first partial
    sum with an entry above `bound`."""
    powers = [v]
    for _ in range(terms):
        powers.append(powers[-1] - H @ powers[-1])
        estimate = powers[1] + sum(powers[1:])
        if estimate.abs().max() > bound:
            break
    return estimate


def trm_reference(reference, batches, eta, cos_lambda):
    """(loss as DomainBed's backward differentiates it, its reported value, alpha, heads) after one
    update of the transfer-risk phase, written in DomainBed's order: the direct term's weights
    through `.data`, updated in place before the backward."""
    alpha = reference.alpha.clone()
    alpha /= alpha.sum(1, keepdim=True)
    y = [y for _, y in batches]
    z_all = reference.featurizer(torch.cat([x for x, _ in batches]))
    z = list(z_all.split(BATCH))
    nll = F.cross_entropy(reference.classifier(z_all), torch.cat(y))
    heads = [(w.weight.detach().clone(), w.bias.detach().clone()) for w in reference.heads]
    for _ in range(30):
        for e, (W, b) in enumerate(heads):
            gW, gb = softmax_regression_gradient(W, b, z[e].detach(), y[e])
            heads[e] = (W - 0.1 * gW, b - 0.1 * gb)
    differentiated, reported = 0.0, 0.0
    for Q, (W, b) in enumerate(heads):
        g_Q, _ = softmax_regression_gradient(W, b, z[Q], y[Q])
        targets = [P for P in range(N_DOMAINS) if P != Q]
        R = {P: F.cross_entropy(z[P] @ W.T + b, y[P]) for P in targets}
        g_P = sum(alpha[Q, P] * softmax_regression_gradient(W, b, z[P].detach(), y[P])[0] for P in targets)
        v = neumann_reference(softmax_regression_hessian(W, b, z[Q].detach()), g_P.flatten())
        matching = cos_lambda * (v @ g_Q.flatten())
        differentiated = differentiated + sum(R[P] * alpha[Q, P].data for P in targets) - matching
        for P in targets:
            alpha[Q, P] *= math.exp(eta * (R[P] * alpha[Q, P]).item())
        reported = reported + sum(R[P].item() * alpha[Q, P].item() for P in targets) - matching.item()
    return nll + differentiated / N_DOMAINS, nll.item() + reported / N_DOMAINS, alpha, heads


def test_trm_update_is_erm_plus_the_transfer_risk_with_its_implicit_gradient():
    eta, cos_lambda = 0.5, 0.5
    algorithm, reference, captured = setting("TRM", iters=0, groupdro_eta=eta, cos_lambda=cos_lambda)
    batches = minibatches()
    loss, reported, alpha, heads = trm_reference(reference, batches, eta, cos_lambda)
    stats = floats(algorithm.update(batches))
    assert stats["loss"] == pytest.approx(reported, rel=1e-5)
    assert stats["trm_loss"] == pytest.approx(stats["loss"] - stats["nll"])
    torch.testing.assert_close(algorithm.alpha, alpha)
    for head, (W, b) in zip(algorithm.heads, heads):
        torch.testing.assert_close(head.weight.detach(), W, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(head.bias.detach(), b, atol=1e-5, rtol=1e-5)
    assert_gradients_of(captured[0], reference, loss, atol=1e-5)
    assert all(p.grad is None for p in algorithm.heads.parameters())


def test_trm_is_erm_for_its_first_iters_updates():
    algorithm, reference, captured = setting("TRM", iters=1)
    batches = minibatches()
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    heads, alpha = copy.deepcopy(algorithm.heads.state_dict()), algorithm.alpha.clone()
    stats = floats(algorithm.update(batches))
    assert stats["trm_loss"] == 0.0
    assert_gradients_of(captured[0], reference, F.cross_entropy(reference.predict(x), y))
    assert all(torch.equal(heads[k], v) for k, v in algorithm.heads.state_dict().items())
    assert torch.equal(algorithm.alpha, alpha)
    stats = floats(algorithm.update(minibatches(1)))
    assert stats["trm_loss"] != 0.0 and int(algorithm.update_count) == 2
    torch.testing.assert_close(algorithm.alpha.sum(1), torch.ones(N_DOMAINS), atol=0.1, rtol=0)  # normalised, then one step


def test_trm_with_one_training_domain_is_refused_in_one_line():
    hparams = hparams_registry.default_hparams("TRM", "Synthetic")
    with pytest.raises(UsageError, match="TRM transfers heads between training domains and has 1; valid: 2 or more"):
        algorithms.get_algorithm_class("TRM")((DIM,), N_CLASSES, 1, hparams)


@pytest.mark.parametrize("scale, diverges", [(0.5, False), (6.0, True)])
def test_neumann_series_is_the_truncated_sum_and_stops_when_it_diverges(scale, diverges):
    generator = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(4, 3)
    z, y = scale * torch.randn(10, 4, generator=generator), torch.randint(3, (10,), generator=generator)
    v = 0.1 * torch.randn(3, 4, generator=generator)
    H = softmax_regression_hessian(head.weight.detach(), head.bias.detach(), z)
    expected = neumann_reference(H, v.flatten())
    torch.testing.assert_close(neumann_inverse_hvp(head, z, y, v).flatten(), expected, atol=1e-5, rtol=1e-5)
    I_H = torch.eye(12) - H
    full = I_H @ v.flatten() + sum(torch.linalg.matrix_power(I_H, k) @ v.flatten() for k in range(1, 11))
    assert (expected.abs().max() > 10.0) == diverges
    assert torch.allclose(expected, full, atol=1e-5) != diverges


# ------------------------------------------------------------------------------------- contract


@pytest.mark.filterwarnings("ignore:--precision bf16:UserWarning")
@pytest.mark.parametrize("name, overrides", [
    ("TRM", {"iters": 0}),
    ("IB_IRM", {"irm_penalty_anneal_iters": 0, "ib_penalty_anneal_iters": 0}),
    ("CAD", {"is_project": True, "is_normalized": True}),
])
def test_the_contract_holds_in_the_phases_and_options_the_defaults_leave_out(name, overrides):
    """The contract checks (tests/test_contract.py runs them on the defaults) with TRM's transfer
    risk from the first update, IB_IRM's penalties at full weight and CAD's projection head: fp16
    and bf16, quantization, state round trip."""
    subject = contract.subject(name)
    subject = dataclasses.replace(subject, hparams={**subject.hparams, **overrides})
    checks = contract.contract_checks(subject)
    del checks["predict in eval mode"]  # the same in every phase, checked on the defaults
    assert [defect for check in checks.values() for defect in check()] == []


# ----------------------------------------------------------------------------------------- hparams


def md5_seed(*args):
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


# DomainBed's hparams_registry: (default, random-search draw) of each method's own hparams
DOMAINBED = {
    "IB_ERM": {"ib_lambda": (1e2, lambda r: 10 ** r.uniform(-1, 5)),
               "ib_penalty_anneal_iters": (500, lambda r: int(10 ** r.uniform(0, 4)))},
    "IB_IRM": {"irm_lambda": (1e2, lambda r: 10 ** r.uniform(-1, 5)),
               "irm_penalty_anneal_iters": (500, lambda r: int(10 ** r.uniform(0, 4))),
               "ib_lambda": (1e2, lambda r: 10 ** r.uniform(-1, 5)),
               "ib_penalty_anneal_iters": (500, lambda r: int(10 ** r.uniform(0, 4)))},
    "CAD": {"lmbda": (1e-1, lambda r: r.choice([1e-4, 1e-3, 1e-2, 1e-1, 1, 1e1, 1e2])),
            "temperature": (0.1, lambda r: r.choice([0.05, 0.1])),
            "is_normalized": (False, lambda r: False), "is_project": (False, lambda r: False),
            "is_flipped": (True, lambda r: True)},
    "TRM": {"cos_lambda": (1e-4, lambda r: 10 ** r.uniform(-5, 0)),
            "iters": (200, lambda r: int(10 ** r.uniform(0, 4))),
            "groupdro_eta": (1e-2, lambda r: 10 ** r.uniform(-3, -1))},
}
DOMAINBED["CondCAD"] = DOMAINBED["CAD"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dataset", ["PACS", "ColoredMNIST"])
def test_hparams_are_domainbeds_defaults_and_draws(name, dataset):
    own = set(hparams_registry.default_hparams(name, dataset)) - set(hparams_registry.default_hparams("ERM", dataset))
    assert own == set(DOMAINBED[name])
    defaults = hparams_registry.default_hparams(name, dataset)
    assert {k: defaults[k] for k in own} == {k: default for k, (default, _) in DOMAINBED[name].items()}
    for hparams_seed, trial_seed in [(1, 0), (7, 2)]:
        seed = md5_seed(hparams_seed, trial_seed)
        drawn = hparams_registry.random_hparams(name, dataset, seed)
        for key, (_, draw) in DOMAINBED[name].items():
            expected = draw(np.random.RandomState(md5_seed(seed, key)))
            assert drawn[key] == expected and type(drawn[key]) is type(DOMAINBED[name][key][0]), key


@pytest.mark.parametrize("name, key, value", [("CAD", "temperature", 0.0), ("TRM", "iters", -1),
                                              ("IB_ERM", "ib_lambda", -1.0), ("TRM", "cos_lambda", -0.5)])
def test_out_of_range_hparams_are_refused_in_one_line(name, key, value):
    with pytest.raises(UsageError, match=f"{key}") as error:
        check_hparams(name, "PACS", {key: value})
    assert "\n" not in str(error.value)
