"""V-REx: Variance Risk Extrapolation (Krueger et al., "Out-of-Distribution Generalization via
Risk Extrapolation (REx)", ICML 2021).

    loss = mean_e R^e + lambda_t * Var_e(R^e)        (population variance over the domains)

lambda_t is 1 for the first `vrex_penalty_anneal_iters` updates and `vrex_lambda` after.

Departures from DomainBed's code (algorithms.VREx): as IRM (domainbed/algorithms/irm.py), the
optimizer reset at the end of the anneal is reproduced by clearing the optimizer's state, and
the update counter is a buffer. DomainBed fills the per-domain losses into a `.cuda()` tensor;
ours stay on the model's device.
"""

import torch
import torch.nn.functional as F

from domainbed import distributed
from domainbed.algorithms.irm import PenaltyAnneal
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("VREx")
class VREx(PenaltyAnneal):
    """Hparams: `vrex_lambda` (1e1), `vrex_penalty_anneal_iters` (500), DomainBed's."""

    DATA_PARALLEL = True  # the per-domain risks are the whole batch's (global_mean) before their variance

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("vrex_lambda", 1e1, lambda r: float(10 ** r.uniform(-1, 5)), help="weight of the variance of the domains' risks")
        hparam("vrex_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)),
               help="steps with penalty weight 1 before vrex_lambda applies (then Adam restarts)")

    prefix = "vrex"

    def objective(self, minibatches, lambda_t):
        all_logits = self.predict(torch.cat([x for x, _ in minibatches]))
        risks = torch.stack([F.cross_entropy(logits, y) for logits, (_, y) in
                             zip(all_logits.split([len(y) for _, y in minibatches]), minibatches)])
        risks = distributed.global_mean(risks)  # R^e of the whole batch under data parallelism
        mean = risks.mean()
        penalty = ((risks - mean) ** 2).mean()
        return mean + lambda_t * penalty, {"nll": mean, "penalty": penalty}
