"""SAGM_DG, SAM, GSAM and GradSurgery: hand-computed steps, and several steps against reference
implementations written here from the papers' update rules (plain loops, no shared code)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import algorithms, hparams_registry, optim
from domainbed.algorithms.grad_surgery import PartLayout, gradient_surgery
from domainbed.errors import UsageError

N_CLASSES = 3


def make(name, input_shape=(6,), dataset="Synthetic", **overrides):
    hparams = hparams_registry.default_hparams(name, dataset)
    hparams.update(pretrained=False, backbone="resnet18", mlp_width=16)
    hparams.update(overrides)
    torch.manual_seed(0)
    return algorithms.get_algorithm_class(name)(input_shape, N_CLASSES, 3, hparams)


def minibatches(input_shape=(6,), n_domains=3, batch=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *input_shape, generator=generator),
             torch.randint(0, N_CLASSES, (batch,), generator=generator)) for _ in range(n_domains)]


def use_network(algorithm, network):
    """Put `network` (e.g. a two-parameter model) inside a SAM-family algorithm."""
    algorithm.network = network
    algorithm.optimizer = algorithm.new_optimizer(network.parameters())
    algorithm.perturbation = algorithm.new_perturbation_optimizer(algorithm.optimizer)


# ---------------------------------------------------------------- hand-computed SAM-family steps

# two-parameter model: logits (w1 x, w2 x, 0), mean cross-entropy over (x, y) pairs
DATA = [(1.0, 0), (2.0, 1), (-0.5, 2), (1.5, 2)]
W0 = (0.3, -0.2)


class TwoParameters(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(W0))

    def forward(self, x):
        return F.pad(x * self.weight, (0, 1))


def logits(w, x):
    return [w[0] * x, w[1] * x, 0.0]


def ce_grad(w):
    g = [0.0, 0.0]
    for x, y in DATA:
        exp = [math.exp(v) for v in logits(w, x)]
        p = [v / sum(exp) for v in exp]
        for k in range(2):
            g[k] += (p[k] - (k == y)) * x / len(DATA)
    return g


def ce_loss(w):
    total = 0.0
    for x, y in DATA:
        z = logits(w, x)
        total += math.log(sum(math.exp(v) for v in z)) - z[y]
    return total / len(DATA)


def two_parameter_step(name, **hparams):
    algorithm = make(name, optimizer="sgd", lr=0.1, weight_decay=0.01, **hparams)
    network = TwoParameters()
    use_network(algorithm, network)
    x = torch.tensor([[x] for x, _ in DATA])
    y = torch.tensor([y for _, y in DATA])
    stats = algorithm.update([(x[:2], y[:2]), (x[2:], y[2:])])
    return stats, network.weight.detach().tolist()


def sgd_first_step(w, direction, lr=0.1, weight_decay=0.01):
    # torch SGD with momentum: the first buffer is the gradient itself; coupled L2 decay
    return [w[k] - lr * (direction[k] + weight_decay * w[k]) for k in range(2)]


def perturbed_gradient(g, scale):
    return ce_grad([W0[k] + scale * g[k] for k in range(2)])


@pytest.mark.parametrize("rho", [0.05, 0.3])
def test_sagm_step_by_hand(rho):
    alpha = 0.02
    g = ce_grad(W0)
    scale = rho / (math.hypot(*g) + 1e-12) - alpha
    g_p = perturbed_gradient(g, scale)
    expected = sgd_first_step(W0, [0.5 * (g[k] + g_p[k]) for k in range(2)])
    stats, w = two_parameter_step("SAGM_DG", rho=rho, alpha=alpha)
    assert w == pytest.approx(expected, abs=1e-6)
    assert stats["loss"] == pytest.approx(ce_loss(W0), abs=1e-6)  # L(w), not L(w + e)


def test_sagm_rho_is_used():
    _, small = two_parameter_step("SAGM_DG", rho=0.05, alpha=0.0)
    _, large = two_parameter_step("SAGM_DG", rho=0.5, alpha=0.0)
    assert abs(small[0] - large[0]) > 1e-4


def test_sagm_adaptive_step_by_hand():
    rho, alpha = 0.1, 0.01
    g = ce_grad(W0)
    norm = math.hypot(abs(W0[0]) * g[0], abs(W0[1]) * g[1])
    scale = rho / (norm + 1e-12) - alpha
    e = [scale * g[k] * W0[k] ** 2 for k in range(2)]
    g_p = ce_grad([W0[k] + e[k] for k in range(2)])
    expected = sgd_first_step(W0, [0.5 * (g[k] + g_p[k]) for k in range(2)])
    _, w = two_parameter_step("SAGM_DG", rho=rho, alpha=alpha, adaptive=True)
    assert w == pytest.approx(expected, abs=1e-6)


def test_sam_step_by_hand():
    rho = 0.2
    g = ce_grad(W0)
    g_p = perturbed_gradient(g, rho / (math.hypot(*g) + 1e-12))
    stats, w = two_parameter_step("SAM", rho=rho)
    assert w == pytest.approx(sgd_first_step(W0, g_p), abs=1e-6)
    assert stats["loss"] == pytest.approx(ce_loss(W0), abs=1e-6)


def test_gsam_step_by_hand():
    rho, alpha = 0.2, 0.3
    g = ce_grad(W0)
    g_p = perturbed_gradient(g, rho / (math.hypot(*g) + 1e-12))
    along = (g[0] * g_p[0] + g[1] * g_p[1]) / (g_p[0] ** 2 + g_p[1] ** 2)
    orthogonal = [g[k] - along * g_p[k] for k in range(2)]
    expected = sgd_first_step(W0, [g_p[k] - alpha * orthogonal[k] for k in range(2)])
    _, w = two_parameter_step("GSAM", rho=rho, alpha=alpha)
    assert w == pytest.approx(expected, abs=1e-6)
    # the orthogonal part really matters here
    _, sam = two_parameter_step("SAM", rho=rho)
    assert abs(w[0] - sam[0]) + abs(w[1] - sam[1]) > 1e-5


# ---------------------------------------------------------------- SAM family vs a reference, Adam

def reference_sharpness_training(network, batches, kind, rho, alpha, lr, weight_decay):
    """Plain re-statement of the published updates with torch.optim.Adam."""
    params = list(network.parameters())
    adam = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    bns = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for mbs in batches:
        x = torch.cat([x for x, _ in mbs])
        y = torch.cat([y for _, y in mbs])
        g = torch.autograd.grad(F.cross_entropy(network(x), y), params)
        norm = torch.stack([gi.norm() for gi in g]).norm()  # as all three official codes
        scale = rho / (norm + 1e-12) - (alpha if kind == "SAGM_DG" else 0.0)
        e = [scale * gi for gi in g]
        with torch.no_grad():
            for p, ei in zip(params, e):
                p.add_(ei)
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = 0.0
        g_p = torch.autograd.grad(F.cross_entropy(network(x), y), params)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        with torch.no_grad():
            for p, ei in zip(params, e):
                p.sub_(ei)
        if kind == "SAM":
            direction = g_p
        elif kind == "GSAM":
            inner = sum((a * b).sum() for a, b in zip(g, g_p))
            squared = sum((b ** 2).sum() for b in g_p)
            direction = [b - alpha * (a - inner / squared * b) for a, b in zip(g, g_p)]
        else:
            direction = [0.5 * (a + b) for a, b in zip(g, g_p)]
        for p, d in zip(params, direction):
            p.grad = d.clone()
        adam.step()
    return network


@pytest.mark.parametrize("name, input_shape", [
    ("SAM", (6,)),
    ("GSAM", (6,)),
    ("SAGM_DG", (6,)),
    ("SAGM_DG", (2, 28, 28)),
    pytest.param("SAM", (2, 28, 28), marks=pytest.mark.slow),
    pytest.param("GSAM", (2, 28, 28), marks=pytest.mark.slow),
])
def test_sharpness_methods_match_reference(name, input_shape):
    hparams = dict(lr=1e-3, weight_decay=1e-3, rho=0.05, alpha=0.05 if name == "GSAM" else 0.01)
    algorithm = make(name, input_shape, **hparams)
    reference = copy.deepcopy(algorithm.network)
    n_steps, batch = (3, 3) if len(input_shape) == 1 else (2, 2)
    batches = [minibatches(input_shape, batch=batch, seed=s) for s in range(n_steps)]
    for mbs in batches:
        algorithm.update(mbs)
    reference_sharpness_training(reference, batches, name, hparams["rho"], hparams["alpha"],
                                 hparams["lr"], hparams["weight_decay"])
    for (key, ours), theirs in zip(algorithm.network.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=key)


def test_perturbed_pass_leaves_batchnorm_statistics_alone():
    algorithm = make("SAGM_DG")
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, N_CLASSES))
    use_network(algorithm, network)
    expected = copy.deepcopy(network)
    mbs = minibatches()
    expected(torch.cat([x for x, _ in mbs]))  # one train-mode pass at w
    algorithm.update(mbs)
    bn, bn_expected = network[1], expected[1]
    torch.testing.assert_close(bn.running_mean, bn_expected.running_mean)
    torch.testing.assert_close(bn.running_var, bn_expected.running_var)
    assert bn.num_batches_tracked.item() == 1
    assert bn.momentum == 0.1


def test_frozen_running_stats_restores_on_error():
    bn = nn.BatchNorm1d(4, momentum=None)
    with pytest.raises(RuntimeError):
        with optim.frozen_running_stats(bn):
            bn(torch.randn(5, 4))
            raise RuntimeError("boom")
    assert bn.momentum is None and bn.num_batches_tracked.item() == 0
    assert torch.equal(bn.running_mean, torch.zeros(4))


def test_wrapper_state_is_float32_and_transient():
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    wrapper = optim.SAGM(torch.optim.SGD([w], lr=0.1), rho=0.1, alpha=0.0)
    (w ** 2).sum().backward()
    wrapper.first_step(zero_grad=True)
    assert all(t.dtype == torch.float32 for state in wrapper.state.values() for t in state.values())
    (w ** 2).sum().backward()
    wrapper.second_step(zero_grad=True)
    assert len(wrapper.state) == 0 and w.grad is None
    assert wrapper.param_groups is wrapper.base_optimizer.param_groups


def test_wrapper_closure_step_equals_two_half_steps():
    def run(use_closure):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        wrapper = optim.GSAM(torch.optim.Adam(model.parameters(), lr=0.01), rho=0.1, alpha=0.2)
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))

        def closure():
            wrapper.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if use_closure:
            wrapper.step(closure)
        else:
            closure()
            wrapper.first_step(zero_grad=True)
            closure()
            wrapper.second_step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_wrapper_rejects_bad_input():
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(UsageError, match="rho"):
        optim.SAM(torch.optim.SGD([w], lr=0.1), rho=-1.0)
    with pytest.raises(UsageError, match="closure"):
        optim.SAM(torch.optim.SGD([w], lr=0.1)).step()


def test_sharpness_checkpoints_hold_only_the_base_optimizer():
    algorithm = make("SAGM_DG")
    algorithm.update(minibatches())
    assert algorithm.optimizers() == {"optimizer": algorithm.optimizer}
    assert isinstance(algorithm.optimizer, torch.optim.Adam)


# ---------------------------------------------------------------- GradSurgery by hand

def surgery(grads, n_parts=1, alpha=0.6, use_alpha=False):
    domain_grads = [[torch.tensor(g, dtype=torch.float32)] for g in grads]
    (total,), rate = gradient_surgery(domain_grads, n_parts, alpha, use_alpha)
    return total.tolist(), rate.item()


def test_projection_by_hand_uses_already_projected_domains():
    # domain 0: [1,0] -> [.5,.5] (vs g1) -> [.5,0] (vs g2); domain 1 meets the projected [.5,0]:
    # [-1,1] -> [0,1] -> [0,0]; domain 2 meets [.5,0] and [0,0]: no conflict left
    total, rate = surgery([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
    assert total == pytest.approx([0.5, -1.0])
    assert rate == pytest.approx(4 / 6)


def test_projection_then_outlier_rule_by_hand():
    # projected norms 0.5, 0, 1: mean .5, population std .408 -> domains 1 and 2 are outliers
    # M = [.5, 0]; [0,0] -> .4 M = [.2, 0]; [0,-1] -> [.2, -.6]
    total, _ = surgery([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]], use_alpha=True)
    assert total == pytest.approx([0.9, -0.6])


def test_cancelled_part_is_zero_not_rounding_noise():
    # g1 = -0.37 g0: projecting g0 on g1 leaves only float32 noise, whose direction would decide
    # how much of g1 the next projection removes; the cancelled part is zero, so g1 and g2 meet
    # no conflict (<g1, g2> > 0) and the total is g1 + g2
    v, w = [0.1, 0.7, 0.3, 0.9], [0.3, -0.2, 0.5, -0.1]
    total, rate = surgery([v, [-0.37 * x for x in v], w])
    assert total == pytest.approx([-0.37 * a + b for a, b in zip(v, w)], abs=1e-6)
    assert rate == pytest.approx(1 / 6)


def test_outlier_rule_uses_population_std():
    # norms 1, 2, 3.5 (no conflicts): mean 2.1667, std 1.027 (ddof 0; ddof 1 would be 1.258),
    # so domain 0 (|dev| 1.167) is an outlier only with the population std
    total, rate = surgery([[1.0, 0.0], [0.0, 2.0], [2.1, 2.8]], use_alpha=True)
    M = [0.0, 2.0]
    expected = [0.6 * 1.0 + 0.4 * M[0] + 0.0 + 0.6 * 2.1 + 0.4 * M[0],
                0.6 * 0.0 + 0.4 * M[1] + 2.0 + 0.6 * 2.8 + 0.4 * M[1]]
    assert total == pytest.approx(expected)
    assert rate == 0.0


def test_outlier_rule_off_is_a_plain_sum_without_conflicts():
    total, _ = surgery([[1.0, 0.0], [0.0, 2.0], [2.1, 2.8]], use_alpha=False)
    assert total == pytest.approx([3.1, 4.8])


def test_parts_are_torch_chunks():
    # rows 0 and 1 conflict (each its own part), row 2 agrees
    g0 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    g1 = torch.tensor([[-1.0, 0.0], [-1.0, 1.0], [1.0, 1.0]])
    (total,), rate = gradient_surgery([[g0], [g1]], n_parts=10, alpha=0.6, use_alpha=False)
    # row 0: g0 -> [0,0] (antiparallel), g1 meets [0,0]: unchanged; row 1: g0 -> [.5,.5],
    # g1 meets [.5,.5]: dot 0, unchanged; row 2: no conflict
    torch.testing.assert_close(total, torch.tensor([[-1.0, 0.0], [-0.5, 1.5], [2.0, 2.0]]))
    assert rate.item() == pytest.approx(2 / 6)
    # one part for the whole tensor: the rows' conflicts are averaged away
    (whole,), _ = gradient_surgery([[g0], [g1]], n_parts=1, alpha=0.6, use_alpha=False)
    assert not torch.allclose(whole, total)


@pytest.mark.parametrize("rows, n_parts", [(3, 10), (12, 10), (64, 10), (7, 3), (1, 5), (10, 1), (512, 10)])
def test_layout_part_count_matches_torch_chunk(rows, n_parts):
    layout = PartLayout([(rows, 3)], n_parts)
    assert layout.n_parts == len(torch.chunk(torch.empty(rows, 3), n_parts))
    tensor = torch.randn(rows, 3)
    matrix = layout.matrix(1)[0]
    layout.pack([tensor], matrix)
    assert torch.equal(layout.unpack(matrix, like=[tensor])[0], tensor)
    squared_norms = layout.part_dots(matrix, matrix)
    expected = torch.stack([c.double().pow(2).sum() for c in torch.chunk(tensor, n_parts)])
    torch.testing.assert_close(squared_norms, expected, rtol=1e-6, atol=0)


def reference_surgery(domain_grads, n_parts, alpha, use_alpha):
    """The issue's rule as loops: torch.chunk views, in-place projection, numpy outlier rule;
    a part projected to rounding noise (norm < 1e-5 of its start) becomes exactly zero."""
    grads = [[g.clone() for g in domain] for domain in domain_grads]
    n_domains = len(grads)
    conflicts = comparisons = 0
    totals = []
    for t in range(len(grads[0])):
        parts = [torch.chunk(grads[d][t], n_parts) for d in range(n_domains)]
        for i in range(n_domains):
            for j in range(len(parts[i])):
                start = parts[i][j].norm()
                for p in range(n_domains):
                    if p == i:
                        continue
                    g_i, g_p = parts[i][j], parts[p][j]
                    inner = torch.dot(g_i.flatten(), g_p.flatten())
                    comparisons += 1
                    if inner < 0:
                        conflicts += 1
                        g_i -= inner / (g_p ** 2).sum() * g_p
                if parts[i][j].norm() <= 1e-5 * start:
                    parts[i][j].zero_()
        projected = [grads[d][t] for d in range(n_domains)]
        if use_alpha:
            norms = np.array([g.norm().item() for g in projected])
            outlier = np.abs(norms - norms.mean()) > norms.std()
            M = torch.stack([g for g, out in zip(projected, outlier) if not out]).mean(0)
            projected = [alpha * g + (1 - alpha) * M if out else g for g, out in zip(projected, outlier)]
        totals.append(torch.stack(projected).sum(0))
    return totals, conflicts / comparisons


@pytest.mark.parametrize("use_alpha", [True, False])
@pytest.mark.parametrize("n_parts", [1, 4, 10])
def test_surgery_matches_reference_on_random_gradients(n_parts, use_alpha):
    generator = torch.Generator().manual_seed(n_parts)
    shapes = [(3, 2), (12, 5), (16, 3, 3, 3), (7,), (1, 4), (300, 2)]
    domain_grads = [[torch.randn(s, generator=generator) for s in shapes] for _ in range(4)]
    ours, rate = gradient_surgery(domain_grads, n_parts, 0.6, use_alpha)
    theirs, their_rate = reference_surgery(domain_grads, n_parts, 0.6, use_alpha)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # each projection makes <g_i, g_p> zero up to rounding, and domain p meets that product again
    # later, so a few of the counted "conflicts" are rounding-level ties in either implementation
    assert rate.item() == pytest.approx(their_rate, abs=0.1)


def test_surgery_does_not_touch_its_inputs_or_wait_for_the_device(monkeypatch):
    domain_grads = [[torch.randn(12, 5), torch.randn(4)] for _ in range(3)]
    before = [[g.clone() for g in d] for d in domain_grads]

    def host_sync(*args, **kwargs):
        raise AssertionError("host synchronisation inside the surgery")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, host_sync)
    gradient_surgery(domain_grads, 10, 0.6, True)
    monkeypatch.undo()
    for d, b in zip(domain_grads, before):
        for x, y in zip(d, b):
            assert torch.equal(x, y)


# ---------------------------------------------------------------- GradSurgery, whole steps

def reference_grad_surgery_training(network, batches, surgered_names, hparams):
    params = dict(network.named_parameters())
    kind = torch.optim.SGD if hparams.get("optimizer") == "sgd" else torch.optim.Adam
    extra = dict(momentum=hparams.get("momentum", 0.0)) if kind is torch.optim.SGD else {}
    adam = kind(params.values(), lr=hparams["lr"], weight_decay=hparams["weight_decay"], **extra)
    names = list(params)
    for mbs in batches:
        per_domain = []
        for x, y in mbs:
            adam.zero_grad()
            F.cross_entropy(network(x), y).backward()
            per_domain.append({n: params[n].grad.clone() for n in names})
        chosen = [n for n in names if n in surgered_names]
        totals, _ = reference_surgery([[d[n] for n in chosen] for d in per_domain],
                                      hparams["n_parts"], hparams["alpha"], hparams["use_alpha"])
        for n, total in zip(chosen, totals):
            params[n].grad = total
        for n in names:
            if n not in surgered_names:
                params[n].grad = sum(d[n] for d in per_domain)
        adam.step()
    return network


def surgered_names(network, all_layers):
    kinds = (nn.Conv2d, nn.Linear) + ((nn.BatchNorm2d,) if all_layers else ())
    return {f"{module_name}.{n}".lstrip(".") for module_name, m in network.named_modules()
            if isinstance(m, kinds) for n, _ in m.named_parameters(recurse=False)}


# a ResNet from random weights with frozen BatchNorm has gradients of 1e4, so after one step the
# network is a different function and float32 rounding grows without bound, and Adam turns the
# rounding of near-zero gradient entries into +-lr steps: for it, one SGD step
@pytest.mark.parametrize("input_shape, all_layers, use_alpha, optimizer", [
    ((6,), True, True, "adam"),
    ((6,), True, False, "adam"),
    ((2, 28, 28), True, True, "adam"),
    pytest.param((3, 32, 32), True, True, "sgd", marks=pytest.mark.slow),
    pytest.param((3, 32, 32), False, True, "sgd", marks=pytest.mark.slow),
])
def test_grad_surgery_matches_reference(input_shape, all_layers, use_alpha, optimizer):
    hparams = dict(lr=1e-3, weight_decay=1e-3, n_parts=4, alpha=0.6, use_alpha=use_alpha,
                   all_layers=all_layers, optimizer=optimizer)
    algorithm = make("GradSurgery", input_shape, **hparams)
    reference = copy.deepcopy(algorithm.network)
    if optimizer == "sgd":
        n_steps, batch = 1, 2
    else:
        n_steps, batch = (3, 3) if len(input_shape) == 1 else (2, 2)
    batches = [minibatches(input_shape, batch=batch, seed=s) for s in range(n_steps)]
    losses = []
    for mbs in batches:
        with torch.no_grad():
            network = copy.deepcopy(algorithm.network)
            losses.append(np.mean([F.cross_entropy(network(x), y).item() for x, y in mbs]))
        stats = algorithm.update(mbs)
        assert stats["loss"] == pytest.approx(losses[-1], abs=1e-5)
        assert 0.0 <= stats["conflict_rate"] <= 1.0
    reference_grad_surgery_training(reference, batches, surgered_names(reference, all_layers), hparams)
    for (key, ours), theirs in zip(algorithm.network.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=key)


def test_grad_surgery_goes_through_the_loss_scaling_hooks():
    # a power-of-two loss scale changes no bit: projections and the outlier test are scale-free
    from domainbed.training.precision import LossScaler

    plain, scaled = make("GradSurgery", n_parts=4), make("GradSurgery", n_parts=4)
    scaled.loss_scaler = LossScaler(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    for seed in range(2):
        mbs = minibatches(seed=seed)
        assert plain.update(mbs) == scaled.update(mbs)
        scaled.loss_scaler.update()
    assert scaled.loss_scaler.backwards == 6 and scaled.loss_scaler.steps == 2
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("all_layers", [True, False])
def test_all_layers_decides_whether_batchnorm_is_surgered(all_layers):
    algorithm = make("GradSurgery", (3, 32, 32), all_layers=all_layers)
    bn_weight = algorithm.featurizer.network.bn1.weight
    assert any(p is bn_weight for p in algorithm.surgered) == all_layers
    assert any(p is bn_weight for p in algorithm.summed) != all_layers
    assert any(p is algorithm.classifier.weight for p in algorithm.surgered)


def test_group_norm_is_summed_not_surgered():
    algorithm = make("GradSurgery", (2, 28, 28))
    assert any(p is algorithm.featurizer.bn0.weight for p in algorithm.summed)


def test_grad_surgery_rejects_bad_hparams():
    with pytest.raises(UsageError, match="n_parts"):
        make("GradSurgery", n_parts=0)
    with pytest.raises(UsageError, match="alpha"):
        make("GradSurgery", alpha=1.5)


# ---------------------------------------------------------------- defaults

def test_defaults_follow_the_released_commands():
    sagm = hparams_registry.default_hparams("SAGM_DG", "OfficeHome")
    assert (sagm["lr"], sagm["resnet_dropout"], sagm["weight_decay"], sagm["alpha"]) == (1e-5, 0.5, 1e-4, 5e-4)
    assert sagm["rho"] == 0.05 and sagm["adaptive"] is False
    dn = hparams_registry.default_hparams("SAGM_DG", "DomainNet")
    assert (dn["lr"], dn["weight_decay"], dn["alpha"]) == (3e-5, 1e-6, 5e-4)
    gs = hparams_registry.default_hparams("GradSurgery", "VLCS")
    assert (gs["lr"], gs["resnet_dropout"], gs["weight_decay"]) == (1e-5, 0.1, 5e-3)
    assert gs["backbone"] == "resnet18"
    assert (gs["n_parts"], gs["alpha"], gs["use_alpha"], gs["all_layers"]) == (10, 0.6, True, True)
    assert hparams_registry.default_hparams("GSAM", "PACS")["alpha"] == 0.01
    for name in ("SAM", "GSAM", "SAGM_DG", "GradSurgery"):
        random = hparams_registry.random_hparams(name, "PACS", 7)
        assert set(random) == set(hparams_registry.default_hparams(name, "PACS"))


def test_surgered_gradients_come_back_in_their_parameters_channels_last_layout():
    """On CUDA the convolutions are channels_last; the surgery packs each tensor in its memory
    order (parts stay whole along dim 0) and returns the layout, which Adam's fast path needs."""
    generator = torch.Generator().manual_seed(0)
    grads = [[torch.randn(6, 3, 3, 3, generator=generator), torch.randn(5, 4, generator=generator)] for _ in range(3)]
    channels_last = [[g[0].contiguous(memory_format=torch.channels_last), g[1]] for g in grads]
    (conv, linear), _ = gradient_surgery(grads, n_parts=3, alpha=0.6, use_alpha=True)
    (conv_cl, linear_cl), _ = gradient_surgery(channels_last, n_parts=3, alpha=0.6, use_alpha=True)
    assert conv_cl.is_contiguous(memory_format=torch.channels_last) and not conv_cl.is_contiguous()
    assert conv.is_contiguous()
    # the same parts, their elements summed in another order (the conflict rate may differ: an
    # inner product with a part just projected orthogonal to it is rounding noise of either sign)
    torch.testing.assert_close(conv_cl, conv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(linear_cl, linear, rtol=1e-5, atol=1e-6)
