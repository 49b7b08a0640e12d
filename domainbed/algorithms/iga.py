"""IGA: Koyama & Yamaguchi, "When is invariance useful in an Out-of-Distribution Generalization
problem?" (Inter-environmental Gradient Alignment), arXiv:2008.01883v2, as DomainBed's `IGA`.
With R_e the cross-entropy of domain e, g_e = grad_theta R_e and g_bar = grad_theta mean_e R_e,

    loss = mean_e R_e + penalty * sum_e ||g_e - g_bar||^2

the trace of the covariance of the per-domain gradients, differentiated through g_e (double
back-propagation; a ViT's attention runs on its twice-differentiable kernel for it).

As DomainBed, g_bar is computed without `create_graph` (a constant in the penalty); this costs
nothing in exactness, since the penalty's derivative in g_bar, -2 sum_e (g_e - g_bar), is zero.

Differences from DomainBed's code: the final backward goes through `self.backward` (fp16 loss
scaling); the per-domain gradients g_e are taken unscaled with `torch.autograd.grad`, as
DomainBed, so under fp16 they may underflow in half-precision layers (use bf16 for IGA).
"""

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.networks.twice_differentiable import twice_differentiable


@register_algorithm("IGA")
class IGA(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        # DomainBed: int 1000; a float so that --penalty 1e3 parses
        hparam("penalty", 1000.0, lambda r: float(10 ** r.uniform(1, 5)), help="weight of the variance of the domains' gradients")

    def update(self, minibatches):
        params = [p for p in self.network.parameters() if p.requires_grad]
        with twice_differentiable():  # the penalty back-propagates through g_e
            risks = [F.cross_entropy(self.network(x), y) for x, y in minibatches]
        g = [torch.autograd.grad(r_e, params, create_graph=True) for r_e in risks]
        mean_risk = torch.stack(risks).mean()
        g_bar = torch.autograd.grad(mean_risk, params, retain_graph=True)
        penalty = sum((g_ep - g_bar_p).pow(2).sum() for g_e in g for g_ep, g_bar_p in zip(g_e, g_bar))

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(mean_risk + self.hparams["penalty"] * penalty)
        self.optimizer_step(self.optimizer)
        return {"loss": mean_risk.detach(), "penalty": penalty.detach().to(mean_risk.dtype)}
