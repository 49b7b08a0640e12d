"""ERM++: Teterwak, Saito, Tsiligkaridis, Saenko & Plummer, "ERM++: An Improved Baseline for
Domain Generalization", WACV 2025 (arXiv 2304.01973), as DomainBed's `ERMPlusPlus`.

ERM's network h(f(x; w_f); w_h) and loss L(w) = CE over the pooled minibatches, trained in two
phases, with a moving average of the weights as the model that predicts. With t the 0-based step:

    warm start (WS), t < linear_steps:   w_h <- opt(w_h, grad_{w_h} L, linear_lr); w_f unchanged
    fine-tuning, t >= linear_steps:      w   <- opt(w,   grad_w L,     lr)
        (at t = linear_steps the head's optimizer state starts afresh: DomainBed switches to a
        second optimizer that has never stepped)
    model parameter averaging (MPA), after every step:
        w_bar_t = w_t                                    t <  sma_start_iter
        w_bar_t = mean(w_{sma_start_iter}, ..., w_t)     t >= sma_start_iter
        over every floating-point parameter and buffer (BatchNorm statistics included); when
        the network's BatchNorm layers track statistics (unfrozen BN, UBN: `freeze_bn` False
        here), the averaged network then runs the step's batch in train mode so its statistics
        follow w_bar.
    predict(x) = h(f(x; w_bar))
    auto-LR (`auto_lr`), at every checkpoint once fine-tuning has begun: ReduceLROnPlateau (mode
        min, factor 0.1, patience 1) on the training domains' validation loss of the averaged
        network; training ends at the checkpoint of the third reduction.

opt is Adam, or LARS with `lars` (domainbed/optim/lars.py, DomainBed's; momentum 0.9). The
paper's other components are not in this class: strong initialisation (AugMix / MEAL-V2
ResNet-50 weights) is a backbone, and full-data retraining is a protocol (see below).

Differences from DomainBed's code (domainbed/algorithms.py, ERMPlusPlus; lib/misc.py; the
schedule in scripts/train_autolr.py), and why:
- One optimizer with two param groups, featurizer and head, instead of a full optimizer and a
  head optimizer that share the head's parameters: every parameter is then in exactly one
  optimizer (the algorithm contract; checkpoints, quantization and averaging rely on it). The
  head group's lr is `linear_lr` during the warm start and `lr` after it, when the head's state
  is cleared: the arithmetic of DomainBed's fresh full optimizer. During the warm start the
  featurizer runs without autograd (DomainBed back-propagates into it and discards the
  gradients), so its parameters do not move at all, whatever the weight decay.
- The warm start is `linear_steps` steps; DomainBed's counter, compared before it is
  incremented, gives linear_steps + 1.
- The average takes the weights after steps >= `sma_start_iter` (0-based), as the paper
  describes it; DomainBed's counter seeds it with the weights one step earlier, so it also holds
  those after steps sma_start_iter - 2 and - 1. `sma_start_iter` is an hparam (DomainBed
  hard-codes 600; the official repository's flag is --sma-start-iter). The running mean is a
  lerp, w_bar + (w - w_bar) / n (DomainBed: (n' w_bar + w) / (n' + 1), equal up to rounding),
  and the averaged network's train-mode pass runs without autograd.
- Auto-LR is DomainBed's train_autolr.py's first stage, through the `on_checkpoint` hook: the
  validation loss is the evaluator's `tr_outloss` (per-example mean per domain, averaged over
  the domains; DomainBed averages per-batch means, which differ in the last, smaller batch); the
  schedule steps at checkpoints after at least one fine-tuning step (DomainBed: from the
  checkpoint after the warm start); the checkpoint of the third reduction is recorded before
  training ends (DomainBed leaves it out). Its second stage, retraining on all the training
  domains' data (validation splits included) with the schedule found, is not implemented: the
  harness keeps the held-out splits, which model selection reads. `auto_lr` False is DomainBed's
  train.py, which never calls the schedule (constant lr, no early end).
- `lars` is kept as DomainBed's switch and is the base optimizer `lars` of the factory; with
  `lars` True, an `optimizer` other than adam (the default) or lars is an error.
- Under --quant the averaged network's layers are swapped as well (the swap acts on the whole
  algorithm): their step sizes start at LSQ's initial value for the averaged weights, are then
  averaged like every other weight, and are never trained.
"""

import copy

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.averaging.batchnorm import updates_batchnorm_statistics
from domainbed.errors import UsageError
from domainbed.hparams.rules import int_at_least, positive_float
from domainbed.optim import get_optimizer

FEATURIZER_GROUP, HEAD_GROUP = 0, 1
# DomainBed's ReduceLROnPlateau(optimizer, "min", patience=1), and its end after three reductions
PLATEAU = dict(mode="min", factor=0.1, patience=1)
REDUCTIONS_TO_END = 3


@register_algorithm("ERMPlusPlus")
class ERMPlusPlus(ERM):
    DATA_PARALLEL = True  # a mean over samples; the SMA copy's BatchNorm, when it trains, is synchronised on GPUs

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("linear_steps", 500, valid=int_at_least(0),
               help="warm-start steps that train only the head (linear probing) before full fine-tuning")
        hparam("linear_lr", 5e-5, lambda r: float(10 ** r.uniform(-5, -3.5)), valid=positive_float(),
               help="learning rate of the head during the warm start")
        hparam("lars", False, help="step with LARS (DomainBed's ERM++ switch; the same as --optimizer lars)")
        hparam("sma_start_iter", 600, valid=int_at_least(0),
               help="first step whose weights enter ERM++'s moving average (before it: the current weights)")
        hparam("auto_lr", True, help="ReduceLROnPlateau on the validation loss after the warm start, "
                                     "ending the run at the third reduction (DomainBed's train_autolr)")
        # DomainBed's ERM++ release unfreezes BatchNorm (UBN); its LARS has momentum 0.9 (Adam ignores it)
        hparam("freeze_bn", False)
        hparam("momentum", 0.9)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        # ERM's one-group optimizer gives way to the featurizer's and the head's groups
        self.optimizer = self.new_optimizer([
            {"params": list(self.featurizer.parameters())},
            {"params": list(self.classifier.parameters()), "lr": hparams["linear_lr"]},
        ])
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, **PLATEAU)
        self.lr_reductions = 0
        self.network_sma = copy.deepcopy(self.network).requires_grad_(False)
        self.sma_tracks_batchnorm = updates_batchnorm_statistics(self.network_sma)

    def new_optimizer(self, params) -> torch.optim.Optimizer:
        name = self.hparams["optimizer"]
        if self.hparams["lars"]:
            if name not in ("adam", "lars"):
                raise UsageError(f"--lars True steps with LARS, but --optimizer is {name!r}; "
                                 "valid: --lars False, or --optimizer adam or lars")
            name = "lars"
        return get_optimizer(name, params, self.hparams["lr"], self.hparams["weight_decay"], self.hparams["momentum"])

    @property
    def warm_start(self) -> bool:
        return self.step < self.hparams["linear_steps"]

    def start_fine_tuning(self) -> None:
        """The head joins the featurizer at lr, its optimizer state cleared."""
        head = self.optimizer.param_groups[HEAD_GROUP]
        head["lr"] = self.optimizer.param_groups[FEATURIZER_GROUP]["lr"]
        for w in head["params"]:
            self.optimizer.state.pop(w, None)

    def update(self, minibatches):
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        if self.step == self.hparams["linear_steps"]:
            self.start_fine_tuning()
        with torch.set_grad_enabled(not self.warm_start):
            z = self.featurizer(all_x)
        loss = F.cross_entropy(self.classifier(z), all_y)

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        self.update_average(all_x)
        group = HEAD_GROUP if self.warm_start else FEATURIZER_GROUP
        return {"loss": loss.detach(), "lr": float(self.optimizer.param_groups[group]["lr"])}

    @torch.no_grad()
    def update_average(self, x) -> None:
        """w_bar <- w before `sma_start_iter`, then the running mean of the weights since it."""
        n = self.step - self.hparams["sma_start_iter"] + 1  # weights in the mean, these included
        w = self.network.state_dict()
        w_bar = self.network_sma.state_dict()
        # by name: a layer `q_exclude` keeps in float in one network only has no partner
        pairs = [(w_bar[key], value) for key, value in w.items() if key in w_bar and value.is_floating_point()]
        averaged, current = [a for a, _ in pairs], [b for _, b in pairs]
        if n <= 1:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 / n)
        if self.sma_tracks_batchnorm:
            self.network_sma(x)

    def predict(self, x, env=None):
        return self.network_sma(x)

    def on_checkpoint(self, step, validation):
        # without held-out data (every training domain's holdout empty) there is nothing to step on
        if not self.hparams["auto_lr"] or step < self.hparams["linear_steps"] or "tr_outloss" not in validation:
            return False
        before = self.optimizer.param_groups[FEATURIZER_GROUP]["lr"]
        self.plateau.step(validation["tr_outloss"])
        if self.optimizer.param_groups[FEATURIZER_GROUP]["lr"] != before:
            self.lr_reductions += 1
        return self.lr_reductions >= REDUCTIONS_TO_END

    def get_extra_state(self):
        # a copy made for prediction (an average's, averaging/averaged_model.state_copy) has no schedule
        plateau = self.plateau.state_dict() if self.plateau is not None else None
        return {"plateau": plateau, "lr_reductions": self.lr_reductions}

    def set_extra_state(self, state):
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])
        self.lr_reductions = state["lr_reductions"]

    def add_parameters_to_optimizers(self, params_beside):
        """The averaged network's new parameters (quantization's step sizes) are averaged, never
        trained: they join no optimizer."""
        averaged = {id(p) for p in self.network_sma.parameters()}
        for new, existing in params_beside:
            if id(existing) in averaged:
                new.requires_grad_(False)
        return super().add_parameters_to_optimizers([(new, existing) for new, existing in params_beside
                                                     if id(existing) not in averaged])
