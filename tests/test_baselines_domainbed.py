"""MMD, CausIRL_CORAL/MMD, SD, IGA, ANDMask, SANDMask, SelfReg, EQRM, Fish and Fishr: one update
on a fixed tiny batch against each paper's formula, written here independently of the modules
(plain loops, torch.cov / torch.cdist, hand-unrolled optimizer steps)."""

import copy
import itertools
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from domainbed import algorithms, hparams_registry
from domainbed.algorithms.fishr import gradient_variances, per_sample_gradients
from domainbed.training.step_stats import as_numbers

N_CLASSES, N_DOMAINS, BATCH, LR = 3, 3, 6, 0.1
INPUT = (8,)


def make(name, **overrides):
    """The method on an MLP featurizer, with first-step-exact SGD (lr 0.1, no weight decay)."""
    hparams = hparams_registry.default_hparams(name, "Synthetic")
    hparams.update(mlp_width=16, mlp_depth=3, mlp_dropout=0.0, optimizer="sgd", momentum=0.9, lr=LR, weight_decay=0.0)
    hparams.update(overrides)
    torch.manual_seed(0)
    return algorithms.get_algorithm_class(name)(INPUT, N_CLASSES, N_DOMAINS, hparams)


def minibatches(seed=1, batch=BATCH, n_domains=N_DOMAINS):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *INPUT, generator=generator) + d,
             torch.randint(0, N_CLASSES, (batch,), generator=generator)) for d in range(n_domains)]


def params(module):
    return [p for p in module.parameters() if p.requires_grad]


def sgd_reference(algorithm, objective):
    """Parameters of `algorithm.network` after one plain SGD step on `objective(network copy)`."""
    network = copy.deepcopy(algorithm.network)
    grads = torch.autograd.grad(objective(network), params(network))
    return [(p - LR * g).detach() for p, g in zip(params(network), grads)]


def assert_weights(algorithm, expected, atol=1e-6):
    for p, e in zip(params(algorithm.network), expected):
        torch.testing.assert_close(p.detach(), e, atol=atol, rtol=1e-5)


def per_domain_ce(network, batches):
    return [F.cross_entropy(network(x), y) for x, y in batches]


def features(network, batches):
    return [network[0](x) for x, _ in batches]


# ------------------------------------------------------------------ feature matching


def coral_reference(a, b):
    return (a.mean(0) - b.mean(0)).pow(2).mean() + (torch.cov(a.t()) - torch.cov(b.t())).pow(2).mean()


def mmd_reference(a, b):
    def k(u, v):
        d2 = torch.cdist(u, v).pow(2)
        return sum(torch.exp(-g * d2) for g in [0.001, 0.01, 0.1, 1, 10, 100, 1000])
    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


@pytest.mark.parametrize("name, distance", [("CORAL", coral_reference), ("MMD", mmd_reference)])
def test_pairwise_feature_matching_step(name, distance):
    gamma = 0.7
    algorithm, batches = make(name, mmd_gamma=gamma), minibatches()

    def objective(network):
        z = features(network, batches)
        ce = sum(F.cross_entropy(network[1](z_i), y) for z_i, (_, y) in zip(z, batches)) / N_DOMAINS
        pairs = list(itertools.combinations(z, 2))
        return ce + gamma * sum(distance(a, b) for a, b in pairs) / len(pairs)

    with torch.no_grad():
        z = features(algorithm.network, batches)
        expected_penalty = sum(distance(a, b) for a, b in itertools.combinations(z, 2)) / 3
    expected = sgd_reference(algorithm, objective)
    stats = algorithm.update(batches)
    assert stats["penalty"] == pytest.approx(float(expected_penalty), rel=1e-4)
    assert expected_penalty > 1e-4
    assert_weights(algorithm, expected, atol=1e-5)


@pytest.mark.parametrize("name, distance", [("CausIRL_CORAL", coral_reference), ("CausIRL_MMD", mmd_reference)])
def test_causirl_matches_two_random_halves(name, distance):
    gamma = 0.7
    algorithm, batches = make(name, mmd_gamma=gamma), minibatches()
    torch.manual_seed(5)
    cuts = [int(torch.randint(0, BATCH, ())) for _ in batches]

    def objective(network):
        z = features(network, batches)
        ce = sum(F.cross_entropy(network[1](z_i), y) for z_i, (_, y) in zip(z, batches)) / N_DOMAINS
        first = torch.cat([z_i[:s] for z_i, s in zip(z, cuts)])
        second = torch.cat([z_i[s:] for z_i, s in zip(z, cuts)])
        return ce + gamma * distance(first, second)

    expected = sgd_reference(algorithm, objective)
    torch.manual_seed(5)
    stats = algorithm.update(batches)
    assert stats["penalty"] > 0
    assert_weights(algorithm, expected, atol=1e-5)


def test_causirl_penalty_is_zero_when_a_half_has_fewer_than_two_rows():
    algorithm = make("CausIRL_CORAL")
    z = [torch.randn(1, 5) for _ in range(3)]  # every cut is 0: one half is empty
    assert float(algorithm.penalty(z)) == 0.0


# ------------------------------------------------------------------ SD, IGA


def test_sd_penalises_the_squared_logits():
    sd_reg = 0.3
    algorithm, batches = make("SD", sd_reg=sd_reg), minibatches()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def objective(network):
        logits = network(x)
        return F.cross_entropy(logits, y) + sd_reg * (logits ** 2).sum() / logits.numel()

    expected_penalty = float((algorithm.network(x).detach() ** 2).mean())
    expected = sgd_reference(algorithm, objective)
    stats = algorithm.update(batches)
    assert stats["penalty"] == pytest.approx(expected_penalty, rel=1e-5)
    assert_weights(algorithm, expected)


def test_iga_penalises_the_spread_of_domain_gradients_by_double_backpropagation():
    weight = 5.0
    algorithm, batches = make("IGA", penalty=weight), minibatches()
    network0 = copy.deepcopy(algorithm.network)
    risks0 = per_domain_ce(network0, batches)
    g_bar = [g.detach() for g in torch.autograd.grad(sum(risks0) / N_DOMAINS, params(network0))]

    def objective(network):
        risks = per_domain_ce(network, batches)
        trace = 0.0
        for r in risks:
            g_e = torch.autograd.grad(r, params(network), create_graph=True)
            trace = trace + sum(((a - b) ** 2).sum() for a, b in zip(g_e, g_bar))
        return sum(risks) / N_DOMAINS + weight * trace

    expected = sgd_reference(algorithm, objective)
    stats = algorithm.update(batches)
    assert stats["penalty"] > 0
    assert_weights(algorithm, expected, atol=1e-5)


# ------------------------------------------------------------------ gradient masks


def domain_gradients(algorithm, batches):
    network = copy.deepcopy(algorithm.network)
    return [torch.autograd.grad(r, params(network)) for r in per_domain_ce(network, batches)]


def masked_step(algorithm, batches, mask_of):
    expected = []
    for p, g in zip(params(algorithm.network), zip(*domain_gradients(algorithm, batches))):
        g = torch.stack(g)
        m = mask_of(g)
        expected.append((p - LR * m * g.mean(0) / (1e-10 + m.float().mean())).detach())
    return expected


def test_and_mask_keeps_only_the_components_every_domain_agrees_on():
    algorithm, batches = make("ANDMask", tau=1.0), minibatches()

    def unanimous(g):
        return ((g > 0).all(0) | (g < 0).all(0)).float()

    expected = masked_step(algorithm, batches, unanimous)
    masks = [unanimous(torch.stack(g)) for g in zip(*domain_gradients(algorithm, batches))]
    assert 0 < sum(m.sum() for m in masks) < sum(m.numel() for m in masks)  # the mask does something
    algorithm.update(batches)
    assert_weights(algorithm, expected)


def test_and_mask_with_no_agreement_leaves_the_weights():
    algorithm, batches = make("ANDMask", tau=1.01), minibatches()
    before = [p.detach().clone() for p in params(algorithm.network)]
    stats = algorithm.update(batches)
    assert math.isfinite(stats["loss"])
    assert_weights(algorithm, before)


def test_sand_mask_is_the_tanh_of_agreement_over_variance():
    tau, k = 0.4, 1e-3
    algorithm, batches = make("SANDMask", tau=tau, k=k), minibatches()

    def sand(g):
        agreement = torch.sign(g).sum(0).abs() / len(g)
        mean = g.mean(0)
        variance = ((g - mean) ** 2).sum(0) / (len(g) - 1)
        return torch.relu(torch.tanh(k * (agreement - tau) / variance))

    expected = masked_step(algorithm, batches, sand)
    algorithm.update(batches)
    assert_weights(algorithm, expected)


def test_sand_mask_with_one_domain_stays_finite():
    algorithm = algorithms.get_algorithm_class("SANDMask")(INPUT, N_CLASSES, 1, make("SANDMask").hparams)
    stats = algorithm.update(minibatches(n_domains=1))
    assert math.isfinite(stats["loss"])
    assert all(torch.isfinite(p).all() for p in algorithm.parameters())


# ------------------------------------------------------------------ SelfReg


def test_selfreg_step():
    algorithm, batches = make("SelfReg"), minibatches()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    y, order = torch.sort(y, stable=True)
    x = x[order]
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(0.5, 0.5).sample())
    perms = []
    for _ in range(2):  # a uniformly random order inside each class block
        key = y.float() + torch.rand(len(y))
        perms.append(torch.argsort(key))
    for pi in perms:
        assert torch.equal(y[pi], y)
    projection = copy.deepcopy(algorithm.cdpl)

    def objective(network):
        z = network[0](x)
        p, o = projection(z), network[1](z)
        mix_o = lam * o[perms[0]] + (1 - lam) * o[perms[1]]
        mix_p = lam * p[perms[0]] + (1 - lam) * p[perms[1]]
        ind = ((o - o[perms[0]]) ** 2).mean() + 0.3 * ((z - p[perms[0]]) ** 2).mean()
        hdl = ((o - mix_o) ** 2).mean() + 0.3 * ((z - mix_p) ** 2).mean()
        ce = F.cross_entropy(o, y)
        return ce + min(float(ce.detach()), 1.0) * (lam * ind + (1 - lam) * hdl)

    expected = sgd_reference(algorithm, objective)
    projection_before = [p.clone() for p in algorithm.cdpl.parameters()]
    torch.manual_seed(3)
    algorithm.update(batches)
    assert_weights(algorithm, expected)
    # DomainBed never trains the projection; it is frozen here
    assert all(torch.equal(a, b) for a, b in zip(projection_before, algorithm.cdpl.parameters()))


# ------------------------------------------------------------------ EQRM


def kde_quantile_reference(risks, alpha):
    """Float64 bisection to convergence on the KDE CDF, and the bracket fraction it lands at."""
    r = risks.double()
    h = 1.06 * r.std() * len(r) ** -0.2
    z = math.sqrt(2) * torch.erfinv(torch.tensor(2 * alpha - 1, dtype=torch.float64))
    lo0, hi0 = r.min() + h * z, r.max() + h * z
    cdf = lambda t: (0.5 * (1 + torch.erf((t - r) / (h * math.sqrt(2))))).mean()  # noqa: E731
    lo, hi = lo0.item(), hi0.item()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cdf(torch.tensor(mid, dtype=torch.float64)) > alpha else (mid, hi)
    return (lo + hi) / 2, ((lo + hi) / 2 - lo0.item()) / (hi0.item() - lo0.item())


def test_eqrm_after_burn_in_descends_the_kde_quantile_of_the_domain_risks():
    alpha = 0.8
    algorithm, batches = make("EQRM", eqrm_quantile=alpha, eqrm_burnin_iters=0, eqrm_lr=LR), minibatches()
    risks = torch.stack(per_domain_ce(algorithm.network, batches)).detach()
    value, fraction = kde_quantile_reference(risks, alpha)
    h = 1.06 * risks.double().std() * 3 ** -0.2
    cdf = (0.5 * (1 + torch.erf((value - risks.double()) / (h * math.sqrt(2))))).mean()
    assert float(cdf) == pytest.approx(alpha, abs=1e-6)

    def objective(network):
        # DomainBed differentiates the bisection: a fixed mix of the bracket ends
        r = torch.stack(per_domain_ce(network, batches))
        h = 1.06 * r.std() * len(r) ** -0.2
        z = statistics.NormalDist().inv_cdf(alpha)
        lo0, hi0 = r.min() + h * z, r.max() + h * z
        return lo0 + fraction * (hi0 - lo0)

    expected = sgd_reference(algorithm, objective)
    algorithm.on_step_begin(0, 10)
    stats = algorithm.update(batches)
    assert stats["loss"] == pytest.approx(value, rel=1e-5)
    assert_weights(algorithm, expected, atol=1e-5)


def test_eqrm_burn_in_is_erm_then_the_optimizer_resets_at_that_step():
    algorithm, batches = make("EQRM", eqrm_burnin_iters=2, eqrm_lr=1e-4), minibatches()
    expected = sgd_reference(algorithm, lambda network: sum(per_domain_ce(network, batches)) / N_DOMAINS)
    algorithm.on_step_begin(0, 10)
    algorithm.update(batches)
    assert_weights(algorithm, expected)
    algorithm.on_step_begin(1, 10)
    algorithm.update(batches)
    assert algorithm.optimizer.param_groups[0]["lr"] == LR
    for p in params(algorithm.network):
        algorithm.optimizer.state[p]["momentum_buffer"].fill_(1e6)
    before = [p.detach().clone() for p in params(algorithm.network)]
    algorithm.on_step_begin(2, 10)
    algorithm.update(batches)
    assert algorithm.optimizer.param_groups[0]["lr"] == 1e-4
    # the reset dropped the (huge) momentum: the step is 1e-4 times this step's gradient alone
    assert all((p - b).abs().max() < 1e-2 for p, b in zip(params(algorithm.network), before))


# ------------------------------------------------------------------ Fish


def test_fish_is_the_hand_unrolled_inner_loop_and_meta_step():
    meta_lr = 0.3
    algorithm = make("Fish", meta_lr=meta_lr)
    theta = [p.detach().clone() for p in params(algorithm.network)]
    momentum = [torch.zeros_like(t) for t in theta]  # the inner SGD's buffers, carried across updates
    network = copy.deepcopy(algorithm.network)
    for seed in (1, 2):
        batches = minibatches(seed)
        with torch.no_grad():
            for p, t in zip(params(network), theta):
                p.copy_(t)
        for i, (x, y) in enumerate(batches):
            grads = torch.autograd.grad(F.cross_entropy(network(x), y), params(network))
            with torch.no_grad():
                for p, g, m in zip(params(network), grads, momentum):
                    m.copy_(g if (seed, i) == (1, 0) else 0.9 * m + g)
                    p.sub_(LR * m)
        theta = [t + meta_lr * (p.detach() - t) for t, p in zip(theta, params(network))]
        algorithm.update(batches)
        assert_weights(algorithm, theta)
    assert set(algorithm.optimizers()) == {"meta_optimizer", "inner_optimizer"}


def test_fish_state_and_saved_model_hold_the_network_alone(tmp_path):
    """The inner loop's weights are scratch space rebuilt from the network at every update: not
    in the state dict, the parameters (which weight averaging averages) or a saved model."""
    from domainbed.runs import model_io

    fish, erm = make("Fish"), make("ERM")
    fish.update(minibatches())
    assert fish.state_dict().keys() == erm.state_dict().keys()
    assert [n for n, _ in fish.named_parameters()] == [n for n, _ in erm.named_parameters()]
    assert sum(p.numel() for p in fish.parameters()) == sum(p.numel() for p in erm.parameters())

    meta = {"algorithm": "Fish", "input_shape": INPUT, "num_classes": N_CLASSES, "num_domains": N_DOMAINS,
            "hparams": fish.hparams}
    model_io.save_model(tmp_path / "fish.pth", fish, meta)
    loaded, _ = model_io.load_model(tmp_path / "fish.pth")
    x = minibatches(seed=7)[0][0]
    with torch.no_grad():
        assert torch.equal(loaded.predict(x), fish.eval().predict(x))
    for (key, a), b in zip(fish.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key


# ------------------------------------------------------------------ Fishr


def loop_gradients(classifier, z, y, create_graph=False):
    rows = []
    for z_i, y_i in zip(z, y):
        g = torch.autograd.grad(F.cross_entropy(classifier(z_i[None]), y_i[None]), list(classifier.parameters()),
                                create_graph=create_graph)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


def test_fishr_per_sample_gradients_and_variances_match_a_loop_over_samples():
    classifier = torch.nn.Linear(5, N_CLASSES)
    z, y = torch.randn(7, 5), torch.randint(0, N_CLASSES, (7,))
    loop = loop_gradients(classifier, z, y)
    torch.testing.assert_close(per_sample_gradients(classifier, z, y), loop)
    v = gradient_variances(loop, [3, 4])
    for row, block in zip(v, (loop[:3], loop[3:])):
        torch.testing.assert_close(row, ((block - block.mean(0)) ** 2).mean(0))


def test_fishr_two_steps_with_the_moving_average():
    lam, ema = 50.0, 0.9
    algorithm = make("Fishr", **{"lambda": lam, "ema": ema, "penalty_anneal_iters": 0})
    average = [torch.zeros(1) for _ in range(N_DOMAINS)]
    for step, seed in enumerate((1, 2)):
        batches = minibatches(seed)
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        memory = {}

        def objective(network):
            z = network[0](x)
            g = loop_gradients(network[1], z, y, create_graph=True)
            v = [((b - b.mean(0)) ** 2).mean(0) for b in g.split(BATCH)]
            a = [ema * m + (1 - ema) * v_e for m, v_e in zip(average, v)]
            memory["a"] = [t.detach() for t in a]
            corrected = [t / (1 - ema) for t in a]
            mean = sum(corrected) / N_DOMAINS
            memory["penalty"] = sum(((c - mean) ** 2).mean() for c in corrected) / N_DOMAINS
            return F.cross_entropy(network(x), y) + lam * memory["penalty"]

        expected = sgd_reference(algorithm, objective)
        average = memory["a"]
        algorithm.on_step_begin(step, 2)
        stats = algorithm.update(batches)
        assert stats["penalty"] == pytest.approx(float(memory["penalty"].detach()), rel=1e-4)
        assert stats["penalty"] > 0
        if step == 0:
            assert_weights(algorithm, expected, atol=1e-5)
    torch.testing.assert_close(algorithm.variance_ema, torch.stack(average))


def test_fishr_anneal_keeps_the_penalty_out_then_resets_the_optimizer():
    algorithm, batches = make("Fishr", penalty_anneal_iters=1), minibatches()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    expected = sgd_reference(algorithm, lambda network: F.cross_entropy(network(x), y))
    algorithm.on_step_begin(0, 2)
    stats = as_numbers(algorithm.update(batches))
    assert stats["loss"] == pytest.approx(stats["nll"])
    assert_weights(algorithm, expected)
    assert algorithm.optimizer.state
    algorithm.optimizer.state[params(algorithm.network)[0]]["momentum_buffer"].fill_(1e6)
    algorithm.on_step_begin(1, 2)
    algorithm.update(batches)
    assert all(p.abs().max() < 1e3 for p in params(algorithm.network))  # the huge buffer was dropped


# ------------------------------------------------------------------ registry


def test_hparams_are_domainbeds():
    expected = {
        "MMD": {"mmd_gamma": 1.0}, "CausIRL_CORAL": {"mmd_gamma": 1.0}, "CausIRL_MMD": {"mmd_gamma": 1.0},
        "SD": {"sd_reg": 0.1}, "IGA": {"penalty": 1000}, "ANDMask": {"tau": 1},
        "SANDMask": {"tau": 1.0, "k": 10.0}, "Fish": {"meta_lr": 0.5},
        "Fishr": {"lambda": 1000.0, "penalty_anneal_iters": 1500, "ema": 0.95},
        "EQRM": {"eqrm_quantile": 0.75, "eqrm_burnin_iters": 2500, "eqrm_lr": 1e-6},
    }
    for name, defaults in expected.items():
        hparams = hparams_registry.default_hparams(name, "PACS")
        assert {k: hparams[k] for k in defaults} == defaults, name
        draw = hparams_registry.random_hparams(name, "PACS", 3)
        assert set(defaults) <= set(draw)
    assert 0.5 <= hparams_registry.random_hparams("EQRM", "PACS", 3)["eqrm_quantile"] <= 0.99
    assert hparams_registry.random_hparams("Fish", "PACS", 3)["meta_lr"] in (0.05, 0.1, 0.5)


# ------------------------------------------------------------------ state round trip

NAMES = ["MMD", "CausIRL_CORAL", "CausIRL_MMD", "SD", "IGA", "ANDMask", "SANDMask", "SelfReg", "EQRM", "Fish", "Fishr"]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_and_optimizers_continue_bit_identically(name):
    # anneal / burn-in at step 1, so the continuation crosses the schedule's switch
    overrides = {"EQRM": {"eqrm_burnin_iters": 1}, "Fishr": {"penalty_anneal_iters": 1}}.get(name, {})
    overrides["optimizer"] = "adam"
    first = make(name, **overrides)
    first.on_step_begin(0, 3)
    first.update(minibatches(1))
    state = copy.deepcopy(first.state_dict())
    optimizers = {k: copy.deepcopy(o.state_dict()) for k, o in first.optimizers().items()}

    second = make(name, **overrides)
    second.load_state_dict(state, strict=True)
    for k, o in second.optimizers().items():
        o.load_state_dict(optimizers[k])
    for algorithm in (first, second):
        torch.manual_seed(7)
        for step in (1, 2):
            algorithm.on_step_begin(step, 3)
            algorithm.update(minibatches(step + 1))
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k


def test_fish_under_loss_scaling_is_the_unscaled_step():
    """Each inner step is scaled and unscaled (a power-of-two scale changes no bit), the meta
    step is not unscaled: without autocast, the fp16 hooks give fp32's update exactly."""
    from domainbed.training.precision import Precision

    plain, scaled = make("Fish"), make("Fish")
    precision = Precision("fp16", "cpu")
    precision.attach(scaled)
    plain.update(minibatches())
    scaled.update(minibatches())
    precision.loss_scaler.update()
    for (name, a), b in zip(plain.network.state_dict().items(), scaled.network.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name


def test_selfreg_quantization_step_sizes_of_the_frozen_projection_stay_frozen():
    from domainbed.quant.swap import quantize_model

    algorithm = make("SelfReg")
    layers = quantize_model(algorithm, 8, q_linear=True)
    assert algorithm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()]) == []
    optimized = {id(p) for group in algorithm.optimizer.param_groups for p in group["params"]}
    trainable = [p for p in algorithm.parameters() if p.requires_grad]
    assert all(id(p) in optimized for p in trainable)
    assert not any(m.step_size.requires_grad for m in algorithm.cdpl.modules() if hasattr(m, "step_size"))
    assert any(m.step_size.requires_grad for m in algorithm.network.modules() if hasattr(m, "step_size"))
