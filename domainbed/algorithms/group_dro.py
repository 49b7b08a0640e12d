"""GroupDRO (Sagawa, Koh, Hashimoto, Liang, "Distributionally Robust Neural Networks for Group
Shifts", ICLR 2020), Algorithm 1 with domains as groups:

    q_e <- q_e * exp(eta * R^e) ; q <- q / sum(q) ; loss = sum_e q_e * R^e

with the risks R^e detached in the q update. Hparam `groupdro_eta` (1e-2), DomainBed's.

Departures from DomainBed's code (algorithms.GroupDRO): q is a buffer of length
`num_domains` created at construction (DomainBed creates it at the first update, so a state
dict of a fresh model has an empty q and cannot be loaded strictly); ones, as DomainBed's, give
the same first step. As a buffer q follows the module's device and dtype, and the risks are
cast to q's dtype, so a float64 model trains in float64.
"""

import torch
import torch.nn.functional as F

from domainbed import distributed
from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("GroupDRO")
class GroupDRO(ERM):
    DATA_PARALLEL = True  # the per-domain risks that reweight q are the whole batch's (global_mean)

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("groupdro_eta", 1e-2, lambda r: float(10 ** r.uniform(-3, -1)),
               help="step size of the exponentiated-gradient update of the domain weights")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("q", torch.ones(num_domains))

    def update(self, minibatches):
        # one forward per domain, as DomainBed (BatchNorm statistics per domain)
        risks = torch.stack([F.cross_entropy(self.predict(x), y) for x, y in minibatches])
        risks = distributed.global_mean(risks)  # the whole batch's under data parallelism: q sees them
        # q has the parameters' dtype (float64 after .double()); under autocast the risks may not
        risks = risks.to(self.q.dtype)
        with torch.no_grad():
            self.q.mul_(torch.exp(self.hparams["groupdro_eta"] * risks))
            self.q.div_(self.q.sum())
        loss = torch.dot(risks, self.q)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}
