"""OrgMixup: the original mixup (Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk
Minimization", ICLR 2018) on all domains pooled, as SWAD's harness (khanrc/swad) names it:

    lam ~ Beta(alpha, alpha) ; pi a random permutation of the pooled batch
    loss = lam * CE(f(lam x + (1 - lam) x_pi), y) + (1 - lam) * CE(f(...), y_pi)

Hparam `mixup_alpha` (0.2, SWAD's). No departure in the math; the permutation comes from the
global torch generator and lam from numpy's, as SWAD's.
"""

import numpy as np
import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("OrgMixup")
class OrgMixup(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("mixup_alpha", 0.2, lambda r: float(10 ** r.uniform(-1, 1)), help="Beta(alpha, alpha) parameter of the mixing weight")

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        permutation = torch.randperm(len(x)).to(x.device)
        lam = float(np.random.beta(self.hparams["mixup_alpha"], self.hparams["mixup_alpha"]))
        logits = self.predict(lam * x + (1 - lam) * x[permutation])
        loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[permutation])
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}
