"""Mixup between domains (Yan et al., "Improve Unsupervised Domain Adaptation with Mixup
Training", 2020; Wang et al., "Heterogeneous Domain Generalization via Domain Mixup", ICASSP
2020), as DomainBed runs it: for each pair (i, j) of `random_pairs_of_minibatches`,

    lam ~ Beta(alpha, alpha) ; x = lam * x_i + (1 - lam) * x_j
    loss += lam * CE(f(x), y_i) + (1 - lam) * CE(f(x), y_j)

divided by the number of domains. Hparam `mixup_alpha` (0.2), DomainBed's. lam is drawn from
numpy's global generator, as DomainBed's (the trainer seeds it). No departure in the math.
"""

import numpy as np
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.minibatch_pairs import random_pairs_of_minibatches
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("Mixup")
class Mixup(ERM):
    DATA_PARALLEL = True  # pairs and lambda are drawn alike on every process; a mean over samples

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("mixup_alpha", 0.2, lambda r: float(10 ** r.uniform(-1, 1)), help="Beta(alpha, alpha) parameter of the mixing weight")

    def update(self, minibatches):
        objective = 0.0
        for (x_i, y_i), (x_j, y_j) in random_pairs_of_minibatches(minibatches):
            lam = float(np.random.beta(self.hparams["mixup_alpha"], self.hparams["mixup_alpha"]))
            logits = self.predict(lam * x_i + (1 - lam) * x_j)
            objective = objective + lam * F.cross_entropy(logits, y_i) + (1 - lam) * F.cross_entropy(logits, y_j)
        objective = objective / len(minibatches)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(objective)
        self.optimizer_step(self.optimizer)
        return {"loss": objective.detach()}
