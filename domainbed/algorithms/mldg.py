"""MLDG: Meta-Learning for Domain Generalization (Li, Yang, Song, Hospedales, AAAI 2018), in
DomainBed's first-order form. For each pair (i, j) of `random_pairs_of_minibatches` (i the
meta-train domain, j the meta-test one), with n the number of domains:

    theta' = Adam step of a copy of theta on F_i = CE(f_theta(x_i), y_i)   (fresh Adam state)
    grad  += grad_theta F_i / n + beta * grad_theta' G_j / n,  G_j = CE(f_theta'(x_j), y_j)

(the second term first-order: the gradient at theta' is used as the gradient at theta), then
one step of the outer optimizer with that gradient. The reported loss is
sum_pairs (F_i + beta * G_j) / n. Hparam `mldg_beta` (1.0), DomainBed's.

Departures from DomainBed's code (algorithms.MLDG):
- Under fp16 every backward is loss-scaled: F_i's and G_j's gradients are accumulated scaled
  (the outer step unscales them once), and the inner Adam step unscales its copy first and is
  skipped on inf/nan, as GradScaler does. Under fp32 the arithmetic is DomainBed's.
- The inner optimizer is `new_optimizer` (the hparams' optimizer, Adam by default), as DomainBed's
  `torch.optim.Adam(lr, weight_decay)`.
- The inner copy is built from `self.network` by deepcopy, as DomainBed, but without the
  outer gradients (DomainBed's copy carries them and its `zero_grad` then drops them).
"""

import copy

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.minibatch_pairs import random_pairs_of_minibatches
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("MLDG")
class MLDG(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("mldg_beta", 1.0, lambda r: float(10 ** r.uniform(-1, 1)), help="weight of the meta-test loss")

    def _add_grads(self, inner_net, weight):
        for p, q in zip(self.network.parameters(), inner_net.parameters()):
            if q.grad is not None:
                p.grad.add_(q.grad, alpha=weight)

    def update(self, minibatches):
        n = len(minibatches)
        beta = self.hparams["mldg_beta"]
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.network.parameters():
            p.grad = torch.zeros_like(p)
        objective = 0.0
        for (x_i, y_i), (x_j, y_j) in random_pairs_of_minibatches(minibatches):
            inner_net = copy.deepcopy(self.network)
            for q in inner_net.parameters():
                q.grad = None
            inner_optimizer = self.new_optimizer(inner_net.parameters())
            F_i = F.cross_entropy(inner_net(x_i), y_i)
            self.backward(F_i)
            self._add_grads(inner_net, 1.0 / n)
            self.unscale_gradients(inner_optimizer)
            self.optimizer_step(inner_optimizer)  # theta'
            inner_optimizer.zero_grad(set_to_none=True)
            G_j = F.cross_entropy(inner_net(x_j), y_j)
            self.backward(G_j)
            self._add_grads(inner_net, beta / n)
            # in float64, python's arithmetic on the two losses' values
            objective = objective + (F_i.detach().double() + beta * G_j.detach().double())
        self.optimizer_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": objective / n}
