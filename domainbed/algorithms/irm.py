"""IRM: Invariant Risk Minimization (Arjovsky, Bottou, Gulrajani, Lopez-Paz, 2019), IRMv1.

    loss = mean_e R^e(w) + lambda_t * mean_e ||grad_{s | s=1} R^e(s * w)||^2

with the squared gradient estimated without bias from two halves of each domain's batch:
grad R^e(s * w) on the even samples times that on the odd samples (the paper's Section 3.2 /
DomainBed's `_irm_penalty`). lambda_t is 1 for the first `irm_penalty_anneal_iters` updates and
`irm_lambda` after.

Departures from DomainBed's code (facebookresearch/DomainBed, algorithms.IRM):
- Reproduced quirk: when the anneal ends (update number `irm_penalty_anneal_iters`) DomainBed
  throws the Adam optimizer away and builds a new one, so the moments restart at the jump of
  lambda; we clear the optimizer's state instead, which is the same step but keeps the param
  groups (quantization's step sizes, a resumed optimizer) intact.
- The dummy scale s lives on the logits' device (DomainBed hard-codes `.cuda()`).
- The update counter is a buffer, as DomainBed's, so checkpoints resume it; the step reads its
  host copy (domainbed/algorithms/update_count.py).
"""

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.algorithms.update_count import count_update, register_update_count, updates_so_far


def irm_penalty(logits, y):
    """grad_s CE(s * logits[::2]) * grad_s CE(s * logits[1::2]) at s = 1 (differentiable)."""
    s = torch.ones((), device=logits.device, requires_grad=True)
    loss_even = F.cross_entropy(logits[::2] * s, y[::2])
    loss_odd = F.cross_entropy(logits[1::2] * s, y[1::2])
    (grad_even,) = torch.autograd.grad(loss_even, [s], create_graph=True)
    (grad_odd,) = torch.autograd.grad(loss_odd, [s], create_graph=True)
    return grad_even * grad_odd


class PenaltyAnneal(ERM):
    """ERM plus a penalty whose weight is `weight_before_anneal` until
    `<prefix>_penalty_anneal_iters` updates, then `<prefix>_lambda`, with DomainBed's optimizer
    reset at that update (IRM, VREx, IB_ERM, IB_IRM)."""

    prefix = None
    weight_before_anneal = 1.0

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        register_update_count(self)

    def annealed_weight(self, prefix: str, before: float) -> float:
        """`before` until `<prefix>_penalty_anneal_iters` updates, `<prefix>_lambda` from then on."""
        anneal = self.hparams[f"{prefix}_penalty_anneal_iters"]
        return self.hparams[f"{prefix}_lambda"] if updates_so_far(self) >= anneal else before

    def penalty_weight(self) -> float:
        return self.annealed_weight(self.prefix, self.weight_before_anneal)

    def restarts_optimizer(self) -> bool:
        """Whether this update ends an anneal, where DomainBed builds a fresh Adam."""
        return updates_so_far(self) == self.hparams[f"{self.prefix}_penalty_anneal_iters"]

    def objective(self, minibatches, lambda_t):
        """(loss, {name: 0-dim tensor}) for this step's penalty weight `lambda_t`."""
        raise NotImplementedError

    def update(self, minibatches):
        lambda_t = self.penalty_weight()
        loss, stats = self.objective(minibatches, lambda_t)
        if self.restarts_optimizer():
            self.optimizer.state.clear()  # DomainBed's fresh Adam at the end of the anneal
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        count_update(self)
        return {"loss": loss.detach(), **{key: value.detach() for key, value in stats.items()}}


@register_algorithm("IRM")
class IRM(PenaltyAnneal):
    """Hparams: `irm_lambda` (1e2), `irm_penalty_anneal_iters` (500), DomainBed's."""

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("irm_lambda", 1e2, lambda r: float(10 ** r.uniform(-1, 5)),
               help="weight of the invariance penalty (squared gradient of the risk w.r.t. a dummy scale)")
        hparam("irm_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)),
               help="steps with penalty weight 1 before irm_lambda applies (then Adam restarts)")

    prefix = "irm"

    def objective(self, minibatches, lambda_t):
        all_logits = self.predict(torch.cat([x for x, _ in minibatches]))
        nll, penalty, start = 0.0, 0.0, 0
        for _, y in minibatches:
            logits = all_logits[start:start + len(y)]
            start += len(y)
            nll = nll + F.cross_entropy(logits, y)
            penalty = penalty + irm_penalty(logits, y)
        nll, penalty = nll / len(minibatches), penalty / len(minibatches)
        return nll + lambda_t * penalty, {"nll": nll, "penalty": penalty}
