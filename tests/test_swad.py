"""Weight averaging: which segments SWAD's LossValley averages, when its valley dies, the averaged
parameters; IIDMax, SMA, BatchNorm re-estimation, restarts, and the extension's settings.

The models here encode the step that wrote them: `onehot` is the one-hot vector of the step's
segment and `step_value` the step itself, so an average tells exactly which segments it holds
(onehot * n_averaged counts them) and which steps (step_value is their mean).
"""

import io
import random
from collections import Counter, deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import torchvision

from domainbed import networks, swad
from domainbed.averaging import extension as averaging_extension
from domainbed.averaging.averaged_model import AveragedModel
from domainbed.averaging.batchnorm import update_bn, updates_batchnorm_statistics
from domainbed.averaging.extension import WeightAveraging, strategy_name, weight_averaging
from domainbed.averaging.sma import SMA
from domainbed.errors import UsageError
from domainbed.training.finite_numbers import NonFiniteNumberError

K = 2  # checkpoint frequency: segment 0 is step 0, segment t >= 1 is steps 2t - 1 and 2t


def segment_of(step: int) -> int:
    return -(-step // K)


class StepEncoded(nn.Module):
    def __init__(self, n_segments: int):
        super().__init__()
        self.onehot = nn.Parameter(torch.zeros(n_segments, dtype=torch.float64))
        self.step_value = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.1)

    @torch.no_grad()
    def write(self, step: int) -> None:
        self.onehot.zero_()
        self.onehot[segment_of(step)] = 1.0
        self.step_value.fill_(step)

    def predict(self, x, env=None):
        return x


def step_value(model) -> float:
    module = model.module if isinstance(model, AveragedModel) else model
    return float(module.step_value.detach())


class FakeEvaluator:
    """Summaries that identify the evaluated model: test_in is its mean step."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, model):
        self.calls += 1
        module = model.module if isinstance(model, AveragedModel) else model
        value = float(module.step_value.detach())
        return {}, {}, {"test_in": value, "train_out": -value}


def make_fold(model):
    messages = []
    return SimpleNamespace(algorithm=model, log=messages.append, messages=messages, name="TE0",
                           evaluator=FakeEvaluator(), device=torch.device("cpu"), stop=False,
                           row_rules={}, final_model=None, train_minibatches=iter(()))


SWAD_KWARGS = {"n_converge": 3, "n_tolerance": 6, "tolerance_ratio": 0.3, "bookkeeping": "reference"}


RUN = {"swad": "False", "swad_kwargs": SWAD_KWARGS, "sma_start": 100, "swad_bn_steps": 500}


def make_extension(strategy="LossValley", **hparams):
    """The extension with SWAD's settings; `swad_kwargs` given here update SWAD's."""
    hparams["swad_kwargs"] = {**SWAD_KWARGS, **hparams.get("swad_kwargs", {})}
    return WeightAveraging(strategy, {**RUN, **hparams})


def train(extension, losses, accs=None, fold=None, first_checkpoint=0):
    """The trainer's loop over checkpoints `first_checkpoint`.. of `losses`; returns (fold, rows,
    number of checkpoints run) after `finish`."""
    fold = fold or make_fold(StepEncoded(len(losses)))
    if extension.segment is None:
        extension.setup(fold)
    n_steps = (len(losses) - 1) * K + 1
    checkpoints = 0
    for step in range(first_checkpoint * K + (first_checkpoint > 0), n_steps):
        fold.algorithm.write(step)
        extension.after_step(fold, step)
        if step % K == 0:
            t = step // K
            extension.at_checkpoint(fold, step, {"train_out": accs[t] if accs else 0.5, "tr_outloss": losses[t]})
            checkpoints += 1
            if fold.stop:
                break
    rows = {}
    extension.finish(fold, rows)
    return fold, rows, checkpoints


def averaged_segments(extension) -> Counter:
    """The multiset of segments in the final average, read from its parameters."""
    final = extension.strategy.get_final_model()
    counts = (final.module.onehot * final.n_averaged).detach().numpy()
    assert np.allclose(counts, np.round(counts), atol=1e-9)
    return Counter({t: int(round(c)) for t, c in enumerate(counts) if round(c)})


def segment_steps(t: int) -> list:
    return [0] if t == 0 else [2 * t - 1, 2 * t]


def expected_step_value(counts: Counter) -> float:
    means = [np.mean(segment_steps(t)) for t, c in counts.items() for _ in range(c)]
    return float(np.mean(means))


def check_parameters(extension, counts: Counter) -> None:
    final = extension.strategy.get_final_model()
    assert final.n_averaged == sum(counts.values())
    assert float(final.module.step_value.detach()) == pytest.approx(expected_step_value(counts), abs=1e-9)
    assert Counter(segment_of(end) for _, end in final.sources) == counts


# --- the four hand-made sequences, reference bookkeeping and corrected --------------------------

FIRST_POSSIBLE = [1.0, 1.1, 1.2, 1.05, 1.0, 1.1, 1.0, 1.05, 1.1, 1.0]
DEAD = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.85, 0.9, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2]
NEVER = [1.0 - 0.05 * t for t in range(10)]
FLAT = [1.0] * 8


def test_convergence_at_first_possible_checkpoint_reference():
    extension = make_extension()
    fold, rows, checkpoints = train(extension, FIRST_POSSIBLE)
    valley = extension.strategy
    assert checkpoints == 10 and not fold.stop
    assert valley.converge_step == 0  # segment 0 (step 0) has the lowest of the first three losses
    assert valley.threshold == pytest.approx(np.mean([1.0, 1.1, 1.2]) * 1.3)
    # S1, S2 "prepended" (they come after S0: the smooth queue was not full); S0 overwritten by
    # S1, then added back at checkpoints 3, 4, 5 while it heads the filling queue; S1, S2 again
    # when they head it; the drain drops S4 (already in) and adds S5..S9.
    counts = Counter({0: 3, 1: 2, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 1})
    assert averaged_segments(extension) == counts
    check_parameters(extension, counts)
    final = valley.get_final_model()
    assert (final.start_step, final.end_step) == (1, 18)
    assert rows["SWAD"] == pytest.approx(expected_step_value(counts))
    assert rows["SWAD (inD)"] == pytest.approx(-expected_step_value(counts))
    assert fold.final_model is final.module
    assert set(fold.row_rules) == {"SWAD", "SWAD (inD)"}
    assert any("converged at step 0" in message for message in fold.messages)


def test_convergence_at_first_possible_checkpoint_corrected():
    extension = make_extension(swad_kwargs={"bookkeeping": "corrected"})
    train(extension, FIRST_POSSIBLE)
    counts = Counter(range(10))
    assert averaged_segments(extension) == counts
    check_parameters(extension, counts)
    assert (extension.strategy.get_final_model().start_step, extension.strategy.get_final_model().end_step) == (0, 18)


def test_dead_valley_reference():
    extension = make_extension()
    fold, rows, checkpoints = train(extension, DEAD)
    valley = extension.strategy
    # converged at checkpoint 7 on S5 (0.8 <= 0.85, 0.9); threshold 0.85 * 1.3 = 1.105
    assert valley.converge_step == segment_steps(5)[-1]
    assert valley.threshold == pytest.approx(1.105)
    # the window S8..S13 (losses >= 1.5) is the first whose minimum exceeds the threshold
    assert valley.dead_valley and fold.stop and checkpoints == 14
    # prepended: of S2..S5, S2 (1.2) is above the threshold, so S3 should start the valley but the
    # off-by-one skips it: S4, S5; S5 again when it heads the queue, then S6, S7
    counts = Counter({4: 1, 5: 2, 6: 1, 7: 1})
    assert averaged_segments(extension) == counts
    check_parameters(extension, counts)
    assert any("dead at step 14" in message for message in fold.messages)


def test_dead_valley_corrected():
    extension = make_extension(swad_kwargs={"bookkeeping": "corrected"})
    fold, _, checkpoints = train(extension, DEAD)
    assert fold.stop and checkpoints == 14
    counts = Counter({3: 1, 4: 1, 5: 1, 6: 1, 7: 1})
    assert averaged_segments(extension) == counts
    check_parameters(extension, counts)


@pytest.mark.parametrize("bookkeeping", ["reference", "corrected"])
def test_never_converging_uses_the_last_segment(bookkeeping):
    extension = make_extension(swad_kwargs={"bookkeeping": bookkeeping})
    fold, rows, checkpoints = train(extension, NEVER)
    assert checkpoints == 10 and not fold.stop and not extension.strategy.is_converged
    final = extension.strategy.get_final_model()
    assert torch.equal(final.module.onehot.detach(), torch.eye(10, dtype=torch.float64)[9])
    assert final.n_averaged == 2 and (final.start_step, final.end_step) == (17, 18)
    assert float(final.module.step_value.detach()) == 17.5
    assert rows["SWAD"] == 17.5
    assert any("never converged" in message for message in fold.messages)


def test_flat_sequence_reference():
    extension = make_extension()
    fold, _, _ = train(extension, FLAT)
    assert extension.strategy.converge_step == 0  # ties go to the oldest segment, as np.argmin
    assert not fold.stop
    counts = Counter({0: 3, 1: 2, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1})
    assert averaged_segments(extension) == counts
    check_parameters(extension, counts)


def test_flat_sequence_corrected():
    extension = make_extension(swad_kwargs={"bookkeeping": "corrected"})
    train(extension, FLAT)
    assert averaged_segments(extension) == Counter(range(8))


def test_equal_windows_overwrite_the_start_segment():
    """n_tolerance == n_converge: nothing is prepended, so S0 is overwritten and never returns."""
    kwargs = {"n_converge": 3, "n_tolerance": 3, "tolerance_ratio": 0.3}
    extension = make_extension(swad_kwargs=kwargs)
    train(extension, FLAT)
    assert averaged_segments(extension) == Counter(range(1, 8))
    corrected = make_extension(swad_kwargs={**kwargs, "bookkeeping": "corrected"})
    train(corrected, FLAT)
    assert averaged_segments(corrected) == Counter(range(8))


# --- an independent restatement of SWAD's LossValley on segment indices ------------------------

def oracle(losses, n_c, n_t, ratio):
    """(segments in the average, checkpoint at which the valley died or None) for SWAD's code."""
    conv, smooth = deque(maxlen=n_c), deque(maxlen=n_t)
    converged, threshold, dead_at = None, None, None
    base, added = None, []

    def add(t):
        added.append(t)

    for t, loss in enumerate(losses):
        conv.append(t)
        smooth.append(t)
        if converged is None:
            if len(conv) == n_c and min(losses[i] for i in conv) == losses[conv[0]]:
                converged, base = conv[0], conv[0]
                threshold = np.mean([losses[i] for i in conv]) * (1 + ratio)
                if n_t < n_c:
                    for i in list(conv)[1:1 + n_c - n_t]:
                        add(i)
                elif n_t > n_c:
                    window = list(smooth)[: n_t - n_c + 1]
                    first = 0
                    for j in range(len(window) - 1, -1, -1):
                        if losses[window[j]] > threshold:
                            first = j + 1
                            break
                    for i in window[first + 1:]:
                        add(i)
            continue
        if smooth[0] < converged:
            continue
        if min(losses[i] for i in smooth) > threshold:
            dead_at = t
            break
        add(smooth[0])
    if converged is None:
        return Counter({len(losses) - 1: 1}), None
    if dead_at is None:
        smooth.popleft()
        while smooth and min(losses[i] for i in smooth) <= threshold:
            add(smooth.popleft())
    return (Counter(added) if added else Counter({base: 1})), dead_at


def test_matches_an_independent_restatement_on_random_sequences():
    rng = random.Random(0)
    for _ in range(60):
        n_c, n_t = rng.randint(1, 5), rng.randint(1, 8)
        ratio = rng.choice([0.0, 0.1, 0.3, 1.0])
        length = rng.randint(1, 16)
        walk = np.cumsum([rng.uniform(-0.3, 0.3) for _ in range(length)]) + 3
        losses = [float(round(x, 1)) for x in walk]  # rounding makes ties common
        extension = make_extension(swad_kwargs={"n_converge": n_c, "n_tolerance": n_t, "tolerance_ratio": ratio})
        fold, _, checkpoints = train(extension, losses)
        counts, dead_at = oracle(losses, n_c, n_t, ratio)
        context = (losses, n_c, n_t, ratio)
        final = extension.strategy.get_final_model()
        if not extension.strategy.is_converged:
            assert counts == Counter({len(losses) - 1: 1}), context
            last = len(losses) - 1
            assert segment_of(final.end_step) == last and final.n_averaged == len(segment_steps(last))
        elif final.n_averaged:
            assert averaged_segments(extension) == counts, context
            check_parameters(extension, counts)
        assert fold.stop == (dead_at is not None), context
        assert checkpoints == (len(losses) if dead_at is None else dead_at + 1), context

        corrected = make_extension(swad_kwargs={"n_converge": n_c, "n_tolerance": n_t, "tolerance_ratio": ratio,
                                                "bookkeeping": "corrected"})
        train(corrected, losses)
        if corrected.strategy.is_converged:  # every segment once, and they are consecutive
            counts = averaged_segments(corrected)
            assert set(counts.values()) == {1} and sorted(counts) == list(range(min(counts), max(counts) + 1)), context
            check_parameters(corrected, counts)


# --- the averaged model ------------------------------------------------------------------------

def test_averaged_model_arithmetic_and_step_range():
    model = StepEncoded(7)
    average = AveragedModel(model)
    assert average.module.optimizer is None and isinstance(model.optimizer, torch.optim.SGD)
    assert average.n_averaged == 0 and (average.start_step, average.end_step) == (-1, -1)
    for step in (4, 5, 9):
        model.write(step)
        average.update_parameters(model, step=step)
    assert average.n_averaged == 3 and (average.start_step, average.end_step) == (4, 9)
    assert float(average.module.step_value.detach()) == pytest.approx(6.0)
    assert average.module.step_value.data_ptr() != model.step_value.data_ptr()

    other = AveragedModel(model)
    for step in (10, 12):
        model.write(step)
        other.update_parameters(model, step=step)
    average.merge(other)
    assert average.n_averaged == 5 and average.end_step == 12
    assert float(average.module.step_value.detach()) == pytest.approx(np.mean([4, 5, 9, 10, 12]))


def test_averaged_model_keeps_buffers_as_copied():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    average = AveragedModel(model)
    model[1].running_mean.fill_(5.0)
    average.update_parameters(model)
    assert torch.equal(average.module[1].running_mean, torch.zeros(2))


def test_update_bn_reestimates_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3))
    batches = [[(torch.randn(4, 3) + 2.0, None), (torch.randn(4, 3) - 1.0, None)] for _ in range(5)]
    update_bn(model, iter(batches), 3)
    inputs = torch.cat([torch.cat([x for x, _ in batch]) for batch in batches[:3]])
    assert torch.allclose(model[0].running_mean, inputs.mean(0), atol=1e-6)
    assert model[0].momentum == 0.1 and model.training


class WithBatchNorm(StepEncoded):
    """StepEncoded with a BatchNorm layer, kept in eval mode while training when `frozen`."""

    def __init__(self, n_segments: int, frozen: bool):
        super().__init__(n_segments)
        self.frozen = frozen
        self.norm = nn.BatchNorm1d(2)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.norm.eval()
        return self


@pytest.mark.parametrize("frozen", [False, True])
def test_finish_reestimates_batchnorm_exactly_when_the_network_updates_it(monkeypatch, frozen):
    calls = []
    monkeypatch.setattr(averaging_extension, "update_bn", lambda model, batches, n: calls.append(n))
    fold = make_fold(WithBatchNorm(len(FLAT), frozen))
    fold.algorithm.eval()  # the mode the evaluator leaves; the network's own train() decides
    train(make_extension(swad_bn_steps=7), FLAT, fold=fold)
    assert calls == ([] if frozen else [7])
    assert not fold.algorithm.training and not fold.algorithm.norm.training  # modes left as they were
    assert fold.row_rules["SWAD"].endswith("BatchNorm statistics frozen in training (freeze_bn), none re-estimated"
                                           if frozen else "BatchNorm statistics re-estimated on 7 training minibatches")


def test_no_batchnorm_no_reestimation(monkeypatch):
    calls = []
    monkeypatch.setattr(averaging_extension, "update_bn", lambda model, batches, n: calls.append(n))
    fold, _, _ = train(make_extension(swad_bn_steps=7), FLAT)
    assert calls == []
    assert fold.row_rules["SWAD"].endswith("; the network has no BatchNorm layer, no statistics to re-estimate")


def test_a_vit_and_convnext_need_no_batchnorm_reestimation():
    from domainbed.averaging.batchnorm import batchnorm_note

    hparams = NETWORK_HP | {"vit_dropout": 0.0}
    for backbone in ("timm:test_vit", "timm:test_convnext"):
        featurizer = networks.get_backbone(backbone)((3, 32, 32), hparams)
        assert not updates_batchnorm_statistics(featurizer)
        assert batchnorm_note(featurizer, 500) == "the network has no BatchNorm layer, no statistics to re-estimate"


NETWORK_HP = {"resnet_dropout": 0.0, "freeze_bn": True, "pretrained": False}


def test_batchnorm_state_follows_the_network_not_one_hparam():
    # freeze_bn True keeps pretrained statistics frozen; from scratch (--pretrained False) they update
    frozen = networks.resnet.ResNet(torchvision.models.resnet18(), (3, 32, 32), NETWORK_HP | {"pretrained": True})
    scratch = networks.resnet.ResNet(torchvision.models.resnet18(), (3, 32, 32), NETWORK_HP)
    unfrozen = networks.resnet.ResNet(torchvision.models.resnet18(), (3, 32, 32),
                                      NETWORK_HP | {"pretrained": True, "freeze_bn": False})
    assert not updates_batchnorm_statistics(frozen)
    assert updates_batchnorm_statistics(scratch) and updates_batchnorm_statistics(unfrozen)
    assert not updates_batchnorm_statistics(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False)))


# --- IIDMax and SMA ------------------------------------------------------------------------------

def test_iidmax_restarts_at_new_best_and_keeps_best_average():
    extension = make_extension("IIDMax")
    fold = make_fold(StepEncoded(5))
    own_accuracy = iter([0.5, 0.62, 0.64, 0.7, 0.69, 0.0])

    def evaluate(model):
        module = model.module if isinstance(model, AveragedModel) else model
        return {}, {}, {"train_out": next(own_accuracy), "test_in": float(module.step_value.detach())}

    fold.evaluator.evaluate = evaluate
    # new maxima of the model's validation accuracy at checkpoints 0, 1 and 3
    _, rows, _ = train(extension, [1.0] * 5, accs=[0.5, 0.6, 0.55, 0.7, 0.65], fold=fold)
    final = extension.strategy.get_final_model()
    assert [segment_of(end) for _, end in final.sources] == [3]  # [3, 4] scored 0.69 < 0.7
    assert (final.start_step, final.end_step) == (5, 6)
    assert rows["IIDMax"] == pytest.approx(5.5)
    assert set(rows) == {"IIDMax", "IIDMax (inD)"}


def test_sma_averages_every_step_from_sma_start():
    extension = make_extension("SMA", sma_start=3)
    fold = make_fold(StepEncoded(5))
    fold.evaluator.evaluate = lambda model: ({}, {}, {"train_out": step_value(model), "test_in": 0.0})
    _, rows, _ = train(extension, [1.0] * 5, fold=fold)  # validation accuracy grows: the last SMA is the best
    final = extension.strategy.get_final_model()
    assert final.n_averaged == 6 and (final.start_step, final.end_step) == (3, 8)
    assert float(final.module.step_value.detach()) == pytest.approx(np.mean(range(3, 9)))
    assert set(rows) == {"SMA", "SMA (inD)"}


def test_sma_keeps_the_average_of_best_validation_accuracy_not_the_last():
    extension = make_extension("SMA", sma_start=3)
    fold = make_fold(StepEncoded(5))
    # the SMA is evaluated at checkpoints 2, 3, 4 (steps 4, 6, 8); the one at step 6 is best
    accuracy = {3.5: 0.6, 4.5: 0.8, 5.5: 0.7}  # keyed by the SMA's mean step

    def evaluate(model):
        value = step_value(model)
        return {}, {}, {"train_out": accuracy.get(value, value / 100), "test_in": value}

    fold.evaluator.evaluate = evaluate
    _, rows, _ = train(extension, [1.0] * 5, fold=fold)
    assert (extension.strategy.best.start_step, extension.strategy.best.end_step) == (3, 6)
    assert rows["SMA"] == pytest.approx(4.5)  # the mean step of 3..6; the last SMA's is 5.5
    assert rows["SMA (inD)"] == 0.8
    assert fold.final_model.step_value.item() == pytest.approx(4.5)
    assert any("SMA: average [3-8] (N=6) has validation accuracy 0.7000" in m for m in fold.messages)


def test_sma_evaluates_from_sma_start_on_only():
    calls = []
    sma = SMA(lambda model: calls.append(model.n_averaged) or 0.5, sma_start=3, log=lambda *_: None)
    model = StepEncoded(2)
    empty = AveragedModel(model)
    sma.update_and_evaluate(empty, 0.5, 1.0)  # a segment before sma_start holds no step
    assert calls == [] and sma.get_final_model() is None
    segment = AveragedModel(model)
    segment.update_parameters(model, step=3)
    sma.update_and_evaluate(segment, 0.5, 1.0)
    assert calls == [1] and sma.get_final_model().n_averaged == 1


def test_sma_that_never_started_falls_back_to_the_last_model():
    extension = make_extension("SMA", sma_start=100)
    fold, rows, _ = train(extension, [1.0] * 5)
    assert rows["SMA"] == 8.0
    assert any("nothing was averaged" in message for message in fold.messages)


# --- restarts and resumption ---------------------------------------------------------------------

def test_restarts_when_the_parameters_change():
    extension = make_extension()
    fold = make_fold(StepEncoded(6))
    extension.setup(fold)
    for step in range(4):
        fold.algorithm.write(step)
        extension.after_step(fold, step)
        if step % K == 0:
            extension.at_checkpoint(fold, step, {"train_out": 0.5, "tr_outloss": 1.0})
    old_strategy = extension.strategy
    fold.algorithm.extra = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # a module swap adds parameters
    fold.algorithm.write(4)
    extension.after_step(fold, 4)
    assert extension.strategy is not old_strategy and len(extension.strategy.smooth_Q) == 0
    assert extension.segment.n_averaged == 1 and extension.segment.start_step == 4
    assert any("restarts at step 4" in message for message in fold.messages)
    extension.restart(fold)
    assert extension.segment.n_averaged == 0


@pytest.mark.parametrize("strategy", ["LossValley", "IIDMax", "SMA"])
def test_state_dict_resumes_to_the_same_average(strategy):
    losses = [1.0, 1.1, 1.2, 1.05, 1.0, 1.1, 1.0, 1.05, 1.1, 1.0]
    whole = make_extension(strategy, sma_start=3)
    train(whole, losses)

    first = make_extension(strategy, sma_start=3)
    fold = make_fold(StepEncoded(len(losses)))
    first.setup(fold)
    for step in range(0, 4 * K + 1):
        fold.algorithm.write(step)
        first.after_step(fold, step)
        if step % K == 0:
            first.at_checkpoint(fold, step, {"train_out": 0.5, "tr_outloss": losses[step // K]})
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)

    second = make_extension(strategy, sma_start=3)
    second.load_state_dict(torch.load(buffer, weights_only=True))  # before setup: kept until then
    resumed = make_fold(StepEncoded(len(losses)))
    second.setup(resumed)
    train(second, losses, fold=resumed, first_checkpoint=4)
    a, b = whole.strategy.get_final_model(), second.strategy.get_final_model()
    assert a.n_averaged == b.n_averaged and a.sources == b.sources
    assert torch.allclose(a.module.onehot, b.module.onehot) and torch.allclose(a.module.step_value, b.module.step_value)


def test_public_loss_valley_has_swads_contract():
    valley = swad.LossValley(3, 6, 0.3, log=lambda *_: None)  # SWAD's positional arguments
    model = StepEncoded(4)
    for step, loss in enumerate([1.0, 1.1, 1.2, 1.05]):
        model.write(step * K)
        segment = AveragedModel(model)
        segment.update_parameters(model, step=step * K)
        valley.update_and_evaluate(segment, 0.5, loss)
    assert not valley.dead_valley and valley.is_converged
    assert isinstance(valley.get_final_model(), AveragedModel)


# --- non-finite numbers ---------------------------------------------------------------------------

def _feed(valley, losses):
    model = StepEncoded(len(losses))
    for t, loss in enumerate(losses):
        model.write(t * K)
        segment = AveragedModel(model)
        segment.update_parameters(model, step=t * K)
        valley.update_and_evaluate(segment, 0.5, loss)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_loss_valley_refuses_a_nonfinite_validation_loss(bad):
    """A NaN loss made SWAD "converge" at once with threshold nan; now it stops with one line."""
    messages = []
    valley = swad.LossValley(3, 6, 0.3, log=messages.append)
    with pytest.raises(NonFiniteNumberError, match=rf"^SWAD: the segment ending at step 2: validation loss = {bad}; "):
        _feed(valley, [1.0, bad, 1.2])
    assert not valley.is_converged and messages == [] and len(valley.converge_Q) == 1


def test_loss_valley_refuses_a_threshold_that_overflows():
    valley = swad.LossValley(3, 6, 0.3, log=lambda *_: None)
    with pytest.raises(NonFiniteNumberError, match=r"^SWAD: convergence at step 0: threshold = inf; .* overflows"):
        _feed(valley, [1.7e308, 1.7e308, 1.7e308])


def _nan_loss_evaluation(model):
    return {"env1_out": 0.5}, {"env1_out": float("nan")}, {"test_in": 0.5, "train_out": 0.5, "tr_outloss": float("nan")}


def test_a_nonfinite_evaluation_of_the_final_average_is_no_row():
    extension = make_extension()
    fold = make_fold(StepEncoded(1))
    extension.setup(fold)
    fold.algorithm.write(0)
    extension.after_step(fold, 0)
    extension.at_checkpoint(fold, 0, {"train_out": 0.5, "tr_outloss": 1.0})
    fold.evaluator.evaluate = _nan_loss_evaluation
    with pytest.raises(NonFiniteNumberError, match=r"^\[TE0\] SWAD \[0-0\] \(N=1\): tr_outloss = nan, "
                                                   r"env1_out_loss = nan; no row is built on it"):
        extension.finish(fold, rows := {})
    assert rows == {} and fold.final_model is None


@pytest.mark.parametrize("strategy", ["IIDMax", "SMA"])
def test_a_nonfinite_evaluation_of_a_running_average_stops_at_its_checkpoint(strategy):
    extension = make_extension(strategy, sma_start=0)
    fold = make_fold(StepEncoded(3))
    extension.setup(fold)
    fold.evaluator.evaluate = _nan_loss_evaluation
    fold.algorithm.write(0)
    extension.after_step(fold, 0)
    with pytest.raises(NonFiniteNumberError, match=rf"^\[TE0\] {strategy} average \[0-0\] \(N=1\): tr_outloss = nan"):
        extension.at_checkpoint(fold, 0, {"train_out": 0.5, "tr_outloss": 1.0})


# --- settings -----------------------------------------------------------------------------------

def test_strategy_names():
    assert strategy_name("False") is None and strategy_name(False) is None and strategy_name("none") is None
    assert strategy_name("True") == "LossValley" and strategy_name("lossvalley") == "LossValley"
    assert strategy_name("SMA") == "SMA" and strategy_name("IIDMax") == "IIDMax"
    with pytest.raises(UsageError) as error:
        strategy_name("Valley")
    message = str(error.value)
    assert "\n" not in message and "'Valley'" in message
    assert all(name in message for name in ("LossValley", "IIDMax", "SMA", "False"))


def test_factory_reads_hparams():
    assert weight_averaging(RUN) is None
    extension = weight_averaging({**RUN, "swad": "True", "swad_kwargs": {**SWAD_KWARGS, "n_converge": 2}})
    assert extension.strategy_name == "LossValley" and extension.kwargs == {**SWAD_KWARGS, "n_converge": 2}
    assert extension.sma_start == 100 and extension.bn_steps == 500


@pytest.mark.parametrize("kwargs, fragment", [
    ({"n_convergence": 3}, "unknown hparam swad_kwargs.n_convergence; valid: swad_kwargs.n_converge"),
    ({"n_converge": 0}, "hparam swad_kwargs.n_converge 0 is out of range; valid: a positive integer"),
    ({"n_converge": 2.5}, "hparam swad_kwargs.n_converge 2.5 is out of range"),
    ({"n_tolerance": 0}, "hparam swad_kwargs.n_tolerance 0 is out of range; valid: a positive integer"),
    ({"tolerance_ratio": -0.1}, "tolerance_ratio -0.1 is out of range; valid: a finite number >= 0"),
    ({"bookkeeping": "fixed"}, "bookkeeping 'fixed' is out of range; valid: one of reference, corrected"),
])
def test_bad_swad_kwargs_are_one_line_errors(kwargs, fragment):
    """The averaging extension declares its keys' ranges; the one check before a run applies them."""
    from domainbed.hparams.checks import check_hparams

    with pytest.raises(UsageError, match=fragment):
        check_hparams("ERM", "PACS", {"swad": "LossValley", "swad_kwargs": kwargs})


def test_bad_sma_start():
    from domainbed.hparams.checks import check_hparams

    with pytest.raises(UsageError, match="hparam sma_start -1 is out of range; valid: an integer >= 0"):
        check_hparams("ERM", "PACS", {"swad": "SMA", "sma_start": -1})
