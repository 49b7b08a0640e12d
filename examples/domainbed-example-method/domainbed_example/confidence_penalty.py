"""ERM with a confidence penalty: an example of a method kept outside the harness's repository.

Pereyra, Tucker, Chorowski, Kaiser, Hinton, "Regularizing Neural Networks by Penalizing
Confident Output Distributions", ICLR 2017 workshop. One step on the concatenation of every
training domain's minibatch (N samples, logits z):

    L = CE(z, y) - beta * (1/N) sum_i H(softmax(z_i / T))

H being the entropy; low-entropy (over-confident) predictions are penalised, which the paper
finds to generalise better, and which is a common regulariser for shifts between domains.
`beta` is `cp_weight`, `T` is `cp_temperature` (the paper's T = 1; a higher T penalises
confidence among the runner-up classes too). The reported `loss` is L, `penalty` the mean
entropy term.
"""

import torch
import torch.nn.functional as F

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.erm import ERM
from domainbed.hparams.rules import nonnegative_float, positive_float


@register_algorithm("ConfidencePenalty")
class ConfidencePenalty(ERM):
    """ERM minus `cp_weight` times the entropy of the tempered predictions (Pereyra et al. 2017)."""

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        # DomainBed-style draws: log-uniform around the paper's values
        hparam("cp_weight", 0.1, lambda r: float(10 ** r.uniform(-2, 0)), valid=nonnegative_float(),
               help="weight beta of the confidence penalty (the entropy of the predictions is subtracted)")
        hparam("cp_temperature", 1.0, lambda r: float(10 ** r.uniform(-0.5, 0.5)), valid=positive_float(),
               help="temperature T of the softmax whose entropy is the confidence penalty")

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        logits = self.predict(x)
        log_p = F.log_softmax(logits / self.hparams["cp_temperature"], dim=1)
        entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
        loss = F.cross_entropy(logits, y) - self.hparams["cp_weight"] * entropy
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach(), "penalty": entropy.detach()}
