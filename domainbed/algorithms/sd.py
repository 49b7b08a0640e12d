"""Spectral decoupling: Pezeshki et al., "Gradient Starvation: A Learning Proclivity in Neural
Networks", NeurIPS 2021, equation 25, as DomainBed's `SD`: ERM plus an L2 penalty on the logits
y_hat of the pooled minibatch,

    loss = CE(y_hat, y) + sd_reg * mean(y_hat ** 2)

Differences from DomainBed's code: none.
"""

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("SD")
class SD(ERM):
    DATA_PARALLEL = True  # both terms are means over samples

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("sd_reg", 0.1, lambda r: float(10 ** r.uniform(-5, -1)), help="weight of the squared-logits penalty (spectral decoupling)")

    def update(self, minibatches):
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        y_hat = self.predict(all_x)
        loss = F.cross_entropy(y_hat, all_y)
        penalty = y_hat.pow(2).mean()

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss + self.hparams["sd_reg"] * penalty)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach(), "penalty": penalty.detach().to(loss.dtype)}
