"""Deep CORAL (Sun & Saenko, ECCV-W 2016) as DomainBed runs it: ERM plus a penalty that aligns
the first and second moments of the features of every pair of training domains.

For features z_i of domain i (n_i x d), mean mu_i and unbiased covariance C_i:

    penalty = mean over pairs i < j of  mean_k (mu_i - mu_j)_k^2 + mean_kl (C_i - C_j)_kl^2
    loss    = mean_i CE(classifier(z_i), y_i) + mmd_gamma * penalty

This is DomainBed's `CORAL` (its `AbstractMMD` with the "mean_cov" kernel), also the baseline
QT-DoG combines with quantization. As in DomainBed each domain's minibatch goes through the
featurizer on its own, so BatchNorm layers that do train see per-domain statistics, and the
reported `loss` is the classification term alone (the penalty is reported beside it).

Differences from DomainBed's code: none in the computation; the update returns the penalty as a
python float even when there is a single training domain (DomainBed returns the int 0 there).
"""

import itertools

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


def coral_distance(z_i, z_j):
    """mean squared difference of the means plus that of the (unbiased) covariances."""
    mu_i, mu_j = z_i.mean(0, keepdim=True), z_j.mean(0, keepdim=True)
    cent_i, cent_j = z_i - mu_i, z_j - mu_j
    cov_i = cent_i.t() @ cent_i / (len(z_i) - 1)
    cov_j = cent_j.t() @ cent_j / (len(z_j) - 1)
    return (mu_i - mu_j).pow(2).mean() + (cov_i - cov_j).pow(2).mean()


@register_algorithm("CORAL")
class CORAL(ERM):
    def update(self, minibatches):
        features = [self.featurizer(x) for x, _ in minibatches]
        objective = sum(F.cross_entropy(self.classifier(z), y) for z, (_, y) in zip(features, minibatches))
        objective = objective / len(minibatches)
        pairs = list(itertools.combinations(features, 2))
        penalty = sum(coral_distance(z_i, z_j) for z_i, z_j in pairs) / max(1, len(pairs))

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(objective + self.hparams["mmd_gamma"] * penalty)
        self.optimizer_step(self.optimizer)
        return {"loss": objective.item(), "penalty": float(penalty.detach()) if torch.is_tensor(penalty) else 0.0}
