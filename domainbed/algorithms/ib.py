"""IB-ERM and IB-IRM: Ahuja, Caballero, Zhang, Gagnon-Audet, Bengio, Mitliagkas & Rish,
"Invariance Principle Meets Information Bottleneck for Out-of-Distribution Generalization",
NeurIPS 2021, as DomainBed's `IB_ERM` and `IB_IRM`.

The information bottleneck penalises the entropy of the representation z = Phi(x), which the
paper bounds by its variance (Section 4): per domain e, h(Phi) is estimated by

    V^e = mean_k Var_i(z^e_ik)       (unbiased variance over the domain's batch, per feature k)

and with R^e the domain's cross-entropy and P^e IRMv1's penalty (domainbed/algorithms/irm.py),

    IB-ERM:  loss = mean_e R^e + lambda_ib(t) * mean_e V^e
    IB-IRM:  loss = mean_e R^e + lambda_irm(t) * mean_e P^e + lambda_ib(t) * mean_e V^e

lambda_ib(t) is 0 for the first `ib_penalty_anneal_iters` updates and `ib_lambda` after;
lambda_irm(t) is IRM's (1, then `irm_lambda` after `irm_penalty_anneal_iters`). One forward of
the pooled minibatch gives every domain's features and logits, as DomainBed.

Departures from DomainBed's code (algorithms.IB_ERM, algorithms.IB_IRM):
- Reproduced quirk: DomainBed throws Adam away and builds a new one at the update where an
  anneal ends (IB_IRM: where either ends); we clear the optimizer's state there instead, the same
  step with the param groups kept (as IRM, VREx).
- The update counter is a buffer, as DomainBed's, so checkpoints resume it.
- Returned stats: DomainBed's `loss`, `nll`, `IB_penalty` (and `IRM_penalty`); our `nll` is the
  mean risk, while DomainBed's reports the whole loss (its `loss = nll; loss += ...` adds the
  penalties in place to the nll tensor). Training is unaffected.
"""

import torch
import torch.nn.functional as F

from domainbed.algorithms.irm import IRM, PenaltyAnneal, irm_penalty
from domainbed.algorithms.registry import register_algorithm
from domainbed.algorithms.update_count import updates_so_far
from domainbed.hparams.rules import int_at_least, nonnegative_float


def declare_information_bottleneck(hparam) -> None:
    hparam("ib_lambda", 1e2, lambda r: float(10 ** r.uniform(-1, 5)), valid=nonnegative_float(),
           help="weight of the information bottleneck (variance of the features) after its anneal")
    hparam("ib_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)), valid=int_at_least(0),
           help="steps without the information bottleneck before ib_lambda applies (then Adam restarts)")


def ib_penalty(z):
    """V^e: the mean over features of their unbiased variance over the batch (in float32: under
    bf16 autocast the features carry three significant digits, too few for a variance)."""
    return z.float().var(dim=0).mean()


def per_domain(algorithm, minibatches):
    """[(z^e, logits^e, y^e)] for each domain, from one forward of the pooled minibatch."""
    z = algorithm.featurizer(torch.cat([x for x, _ in minibatches]))
    logits = algorithm.classifier(z)
    sizes = [len(y) for _, y in minibatches]
    return list(zip(z.split(sizes), logits.split(sizes), [y for _, y in minibatches]))


@register_algorithm("IB_ERM")
class IB_ERM(PenaltyAnneal):
    """Hparams: `ib_lambda` (1e2), `ib_penalty_anneal_iters` (500), DomainBed's."""

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        declare_information_bottleneck(hparam)

    prefix = "ib"
    weight_before_anneal = 0.0

    def objective(self, minibatches, lambda_ib):
        domains = per_domain(self, minibatches)
        R = torch.stack([F.cross_entropy(logits, y) for _, logits, y in domains]).mean()
        V = torch.stack([ib_penalty(z) for z, _, _ in domains]).mean()
        return R + lambda_ib * V, {"nll": R, "IB_penalty": V}


@register_algorithm("IB_IRM")
class IB_IRM(IRM):
    """IRM's hparams (`irm_lambda` 1e2, `irm_penalty_anneal_iters` 500) and IB_ERM's (`ib_lambda`
    1e2, `ib_penalty_anneal_iters` 500), DomainBed's."""

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        declare_information_bottleneck(hparam)

    def restarts_optimizer(self) -> bool:
        return super().restarts_optimizer() or updates_so_far(self) == self.hparams["ib_penalty_anneal_iters"]

    def objective(self, minibatches, lambda_irm):
        lambda_ib = self.annealed_weight("ib", 0.0)
        domains = per_domain(self, minibatches)
        R = torch.stack([F.cross_entropy(logits, y) for _, logits, y in domains]).mean()
        P = torch.stack([irm_penalty(logits, y) for _, logits, y in domains]).mean()
        V = torch.stack([ib_penalty(z) for z, _, _ in domains]).mean()
        return R + lambda_irm * P + lambda_ib * V, {"nll": R, "IRM_penalty": P, "IB_penalty": V}
