"""ERM++ (domainbed/algorithms/erm_plus_plus.py), DomainBed's LARS (domainbed/optim/lars.py) and
the trainer's `on_checkpoint` hook, against formulas written here independently: hand-unrolled
Adam and LARS steps, the uniform mean of stored weights, ReduceLROnPlateau's rule by hand."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from domainbed import algorithms, hparams_registry, optim
from domainbed.algorithms import contract
from domainbed.algorithms.erm import ERM
from domainbed.errors import UsageError

N_CLASSES, N_DOMAINS, BATCH = 3, 2, 5
INPUT = (8,)
LR, LINEAR_LR, EPS = 1e-2, 3e-2, 1e-8
LINEAR_DEFAULT = 5e-5  # DomainBed's linear_lr


def make(input_shape=INPUT, **overrides):
    hparams = hparams_registry.default_hparams("ERMPlusPlus", "Synthetic")
    hparams.update(mlp_width=16, mlp_depth=3, mlp_dropout=0.0, lr=LR, linear_lr=LINEAR_LR, weight_decay=0.0,
                   backbone="resnet18", pretrained=False, resnet_dropout=0.0)
    hparams.update(overrides)
    torch.manual_seed(0)
    algorithm = algorithms.get_algorithm_class("ERMPlusPlus")(input_shape, N_CLASSES, N_DOMAINS, hparams)
    return algorithm.train()


def minibatches(seed, input_shape=INPUT):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, *input_shape, generator=generator) + d,
             torch.randint(0, N_CLASSES, (BATCH,), generator=generator)) for d in range(N_DOMAINS)]


def step(algorithm, t, input_shape=INPUT):
    algorithm.on_step_begin(t, 100)
    return algorithm.update(minibatches(t, input_shape))


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def loss_gradients(algorithm, t, weight_decay=0.0):
    """(featurizer gradients, head gradients) of the pooled cross-entropy at the current weights,
    plus weight decay times the weights (Adam's coupled L2), on a copy."""
    network = copy.deepcopy(algorithm.network)
    x = torch.cat([x for x, _ in minibatches(t)])
    y = torch.cat([y for _, y in minibatches(t)])
    loss = F.cross_entropy(network(x), y)
    f, h = list(network[0].parameters()), list(network[1].parameters())
    grads = torch.autograd.grad(loss, f + h)
    grads = [g + weight_decay * w.detach() for g, w in zip(grads, f + h)]
    return grads[:len(f)], grads[len(f):]


def adam_first_step(w, g, lr):
    """Adam from a fresh state: m_hat = g, v_hat = g^2, so w - lr g / (|g| + eps)."""
    return w - lr * g / (g.abs() + EPS)


# ------------------------------------------------------------------ LARS


def test_lars_steps_match_the_formula():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    bias = torch.nn.Parameter(torch.randn(4))
    lr, wd, m, eta = 0.5, 0.01, 0.9, 0.001
    opt = optim.LARS([weight, bias], lr=lr, weight_decay=wd, momentum=m, trust_coefficient=eta)
    w, b = weight.detach().clone(), bias.detach().clone()
    mu_w, mu_b = torch.zeros_like(w), torch.zeros_like(b)
    for seed in range(3):
        g_w, g_b = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)), torch.randn(4)
        weight.grad, bias.grad = g_w.clone(), g_b.clone()
        opt.step()
        d = g_w + wd * w
        mu_w = m * mu_w + eta * w.norm() / d.norm() * d
        mu_b = m * mu_b + g_b  # one dimension: no weight decay, no rate scaling
        w, b = w - lr * mu_w, b - lr * mu_b
        torch.testing.assert_close(weight.detach(), w)
        torch.testing.assert_close(bias.detach(), b)


def test_lars_trust_ratio_is_one_for_a_zero_weight_or_update():
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    opt = optim.LARS([weight], lr=1.0, momentum=0.0)
    weight.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(weight.detach(), -torch.ones(2, 2))  # q = 1, not eta * 0 / 2
    weight.grad = torch.zeros(2, 2)
    opt.step()
    assert torch.equal(weight.detach(), -torch.ones(2, 2))  # ||d|| = 0: no nan


def test_lars_is_an_optimizer_choice_and_an_unknown_one_is_named():
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = optim.get_optimizer("lars", [p], 0.1, 0.01, 0.9)
    assert isinstance(opt, optim.LARS) and opt.defaults["momentum"] == 0.9
    with pytest.raises(UsageError, match="lars"):
        optim.get_optimizer("larss", [p], 0.1, 0.0)


def test_lars_switch_picks_lars_with_domainbed_momentum_and_refuses_another_optimizer():
    algorithm = make(lars=True)
    assert isinstance(algorithm.optimizer, optim.LARS)
    assert algorithm.optimizer.defaults["momentum"] == 0.9
    assert isinstance(make(optimizer="lars").optimizer, optim.LARS)
    with pytest.raises(UsageError, match="--lars True.*'sgd'.*valid"):
        make(lars=True, optimizer="sgd")


# ------------------------------------------------------------------ warm start, then fine-tuning


def test_warm_start_moves_only_the_head_by_adam_at_linear_lr():
    wd = 0.05  # weight decay would move any parameter the optimizer stepped, gradient or not
    algorithm = make(linear_steps=3, weight_decay=wd)
    featurizer = snapshot(algorithm.featurizer)
    head = snapshot(algorithm.classifier)
    _, g_head = loss_gradients(algorithm, 0, wd)
    stats = step(algorithm, 0)
    for w, expected, g in zip(algorithm.classifier.parameters(), head, g_head):
        torch.testing.assert_close(w.detach(), adam_first_step(expected, g, LINEAR_LR))
    assert stats["lr"] == LINEAR_LR
    for t in (1, 2):
        step(algorithm, t)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(algorithm.featurizer), featurizer))
    assert not any(torch.equal(a, b) for a, b in zip(snapshot(algorithm.classifier), head))


def test_fine_tuning_starts_every_weight_with_a_fresh_adam_at_lr():
    algorithm = make(linear_steps=2)
    for t in (0, 1):
        step(algorithm, t)
    before = snapshot(algorithm.network)
    g_featurizer, g_head = loss_gradients(algorithm, 2)
    stats = step(algorithm, 2)
    # DomainBed's full optimizer has never stepped: its first step, for the head too
    for w, expected, g in zip(algorithm.network.parameters(), before, g_featurizer + g_head):
        torch.testing.assert_close(w.detach(), adam_first_step(expected, g, LR))
    assert [group["lr"] for group in algorithm.optimizer.param_groups] == [LR, LR] and stats["lr"] == LR
    assert all(int(algorithm.optimizer.state[w]["step"]) == 1 for w in algorithm.network.parameters())


# ------------------------------------------------------------------ the moving average


def test_predict_uses_the_running_mean_of_the_weights_from_sma_start_iter():
    algorithm = make(linear_steps=0, sma_start_iter=2)
    history = []
    for t in range(5):
        step(algorithm, t)
        history.append(snapshot(algorithm.network))
        averaged = snapshot(algorithm.network_sma)
        kept = history[2:] if t >= 2 else history[-1:]  # before the start: the current weights
        for a, *ws in zip(averaged, *kept):
            torch.testing.assert_close(a, torch.stack(ws).mean(0))
    x = minibatches(9)[0][0]
    algorithm.eval()
    with torch.no_grad():
        expected = torch.func.functional_call(algorithm.network, dict(zip(
            [n for n, _ in algorithm.network.named_parameters()], averaged)), (x,))
        torch.testing.assert_close(algorithm.predict(x), expected)
        assert not torch.allclose(algorithm.predict(x), algorithm.network(x))


def test_batchnorm_statistics_are_averaged_then_follow_the_averaged_weights():
    shape = (3, 32, 32)
    algorithm = make(shape, linear_steps=0, sma_start_iter=0)
    bn, sma_bn = algorithm.network[0].network.bn1, algorithm.network_sma[0].network.bn1
    step(algorithm, 0, shape)
    previous = sma_bn.running_mean.clone()
    step(algorithm, 1, shape)
    # r_bar <- r_bar + (r - r_bar) / 2 with the trained network's statistics r, then one momentum
    # step on the batch through the averaged stem (the averaged network runs it in train mode)
    x = torch.cat([x for x, _ in minibatches(1, shape)])
    with torch.no_grad():
        batch_mean = F.conv2d(x, algorithm.network_sma[0].network.conv1.weight, stride=2, padding=3).mean((0, 2, 3))
    m = sma_bn.momentum
    torch.testing.assert_close(sma_bn.running_mean, (1 - m) * (previous + bn.running_mean) / 2 + m * batch_mean)


def test_the_averaged_network_is_never_trained_even_after_a_quantization_swap():
    from domainbed.quant import quantize_model
    algorithm = make(linear_steps=1, sma_start_iter=0)
    step(algorithm, 0)
    layers = quantize_model(algorithm, 8, q_linear=True)
    left_out = algorithm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
    assert left_out == []
    in_optimizer = {id(p) for group in algorithm.optimizer.param_groups for p in group["params"]}
    for name, p in algorithm.named_parameters():
        assert (id(p) in in_optimizer) == (not name.startswith("network_sma.")), name
        assert p.requires_grad == (not name.startswith("network_sma.")), name
    step(algorithm, 1)
    for (name, w), (_, w_bar) in zip(algorithm.network.named_parameters(), algorithm.network_sma.named_parameters()):
        if name.endswith("step_size"):  # averaged with the trained network's: (init + w_1) / 2 at n = 2
            assert not torch.equal(w, w_bar)


# ------------------------------------------------------------------ auto-LR


def test_auto_lr_is_reduce_on_plateau_after_the_warm_start_and_ends_at_the_third_reduction():
    algorithm = make(linear_steps=1)
    step(algorithm, 0)
    assert algorithm.on_checkpoint(0, {"tr_outloss": 9.0}) is False  # warm start: not stepped
    step(algorithm, 1)
    # patience 1: the second loss in a row that is no better than the best (by 1e-4 relative) cuts lr by 10
    losses = [1.0, 1.1, 1.2, 1.3, 1.4, 0.5, 0.6, 0.7]
    expected = [LR, LR, LR / 10, LR / 10, LR / 100, LR / 100, LR / 100, LR / 1000]
    ends = []
    for t, (loss, lr) in enumerate(zip(losses, expected)):
        ends.append(algorithm.on_checkpoint(1 + t, {"tr_outloss": loss, "train_out": 0.5}))
        assert [group["lr"] for group in algorithm.optimizer.param_groups] == pytest.approx([lr, lr], rel=1e-12)
    assert ends == [False] * 7 + [True]

    off = make(linear_steps=0, auto_lr=False)
    assert not any(off.on_checkpoint(t, {"tr_outloss": 1.0 + t}) for t in range(6))
    assert [group["lr"] for group in off.optimizer.param_groups] == [LR, LINEAR_LR]


def test_the_schedule_survives_a_state_round_trip():
    algorithm = make(linear_steps=0)
    for t, loss in enumerate([1.0, 1.1, 1.2, 1.3]):
        algorithm.on_checkpoint(t, {"tr_outloss": loss})
    copy_ = make(linear_steps=0)
    copy_.load_state_dict(copy.deepcopy(algorithm.state_dict()), strict=True)
    copy_.optimizer.load_state_dict(algorithm.optimizer.state_dict())
    for t, loss in enumerate([1.4, 1.5, 1.6, 1.7], start=4):  # reductions at 1.4 and 1.6, which ends
        assert algorithm.on_checkpoint(t, {"tr_outloss": loss}) == copy_.on_checkpoint(t, {"tr_outloss": loss})
    assert copy_.lr_reductions == algorithm.lr_reductions == 3


# ------------------------------------------------------------------ the contract, across the phases


def test_contract_holds_across_the_warm_start_switch_and_the_average():
    # the contract's own checks at the defaults never leave the warm start (500 steps): here the
    # round trip, fp16 and the quantization swap cross the switch (step 1) with the average on
    hparams = contract.subject("ERMPlusPlus").hparams | {"linear_steps": 1, "sma_start_iter": 0}
    subject = contract.Subject("ERMPlusPlus", algorithms.get_algorithm_class("ERMPlusPlus"), hparams)
    assert contract.check_update(subject) == []
    assert contract.check_state_round_trip(subject) == []
    assert contract.check_quantization_swap(subject) == []
    assert contract.check_mixed_precision(subject, "bf16") == []
    assert contract.check_mixed_precision(subject, "fp16") == []


# ------------------------------------------------------------------ the trainer's hook

TINY = ["--dataset", "Synthetic", "--steps", "7", "--checkpoint_freq", "2", "--batch_size", "8",
        "--test_envs", "0", "--num_workers", "0", "--swad", "False"]


def test_trainer_hands_on_checkpoint_the_training_domains_validation_and_stops_when_asked(run_train_all, monkeypatch):
    seen = []

    def on_checkpoint(self, step, validation):
        seen.append((step, dict(validation)))
        return step == 2

    monkeypatch.setattr(ERM, "on_checkpoint", on_checkpoint)
    result = run_train_all("hook", *TINY, "--algorithm", "ERM")
    assert [s for s, _ in seen] == [0, 2]  # steps 3 to 6 are never trained
    for _, validation in seen:
        assert {"train_out", "tr_outloss", "env1_out", "env1_out_loss", "env2_out_loss"} <= set(validation)
        assert not any(key.startswith(("env0_", "test_")) for key in validation), validation
    records = [json.loads(line) for line in (result["out_dir"] / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2]
    assert seen[-1][1]["tr_outloss"] == records[-1]["tr_outloss"]
    assert "ERM ends training at this checkpoint" in (result["out_dir"] / "log.txt").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--quant", "1", "--q_steps", "3"], ["--swad", "LossValley"]],
                         ids=["plain", "qtdog", "swad"])
def test_resumes_exactly_across_the_switch_the_average_and_the_schedule(run_train_all, monkeypatch, tmp_path, extra):
    from test_exact_resume import check_exact_resume
    # a checkpoint every step and a large lr: the validation loss climbs, so the schedule cuts
    # lr at the checkpoints of steps 3 and 5 and ends the run at step 7, two steps early
    argv = [*TINY, "--deterministic", "--algorithm", "ERMPlusPlus", "--steps", "9", "--checkpoint_freq", "1",
            "--lr", "0.5", "--linear_steps", "1", "--sma_start_iter", "2", *extra]
    # killed after the update of step 2, during the evaluation at step 4, after the update of
    # step 5, each run resuming from the last checkpoint
    check_exact_resume(run_train_all, monkeypatch, argv, ["step:3", "eval:3", "step:2"])
    if not extra:
        (whole,) = (tmp_path / "out" / "Synthetic").glob("*_whole")
        lrs = [json.loads(line)["lr"] for line in (whole / "results.jsonl").read_text().splitlines()]
        assert lrs == pytest.approx([LINEAR_DEFAULT] + [0.5] * 3 + [0.05] * 2 + [0.005] * 2)
