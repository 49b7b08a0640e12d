"""Feature-distribution matching between domains, and Deep CORAL on it.

One penalty implementation serves four methods: CORAL and MMD (here and in `mmd.py`) match the
features of every pair of training domains, CausIRL_CORAL and CausIRL_MMD (`causirl.py`) match
two random halves of the pooled minibatch. They differ only in the distance `d` between two
samples of features and in which samples are compared:

    loss = mean_i CE(classifier(z_i), y_i) + mmd_gamma * penalty(z_1, ..., z_m)

`coral_distance` (DomainBed's "mean_cov" kernel): for features z (n x d) with mean mu and
unbiased covariance C,  d(z, z') = mean_k (mu - mu')_k^2 + mean_kl (C - C')_kl^2.

`gaussian_mmd` (DomainBed's "gaussian" kernel): the biased estimate of the squared MMD with the
sum of seven RBF kernels k(a, b) = sum_g exp(-g ||a - b||^2), g in 1e-3 ... 1e3,
d(z, z') = mean K(z, z) + mean K(z', z') - 2 mean K(z, z').

Deep CORAL: Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation",
ECCV-W 2016, as DomainBed's `CORAL` (its `AbstractMMD`), also the baseline QT-DoG combines with
quantization. As in DomainBed each domain's minibatch goes through the featurizer on its own, so
BatchNorm layers that do train see per-domain statistics, and the reported `loss` is the
classification term alone (the penalty is reported beside it).

Differences from DomainBed's code: none in the computation; the update returns the penalty as a
floating-point number (a 0-dim tensor) even when there is a single training domain (DomainBed
returns the int 0 there).
"""

import itertools

import torch
import torch.nn.functional as F

from domainbed import distributed
from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.hparams.rules import nonnegative_float

RBF_GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)


def coral_distance(z_i, z_j):
    """mean squared difference of the means plus that of the (unbiased) covariances."""
    mu_i, mu_j = z_i.mean(0, keepdim=True), z_j.mean(0, keepdim=True)
    cent_i, cent_j = z_i - mu_i, z_j - mu_j
    cov_i = cent_i.t() @ cent_i / (len(z_i) - 1)
    cov_j = cent_j.t() @ cent_j / (len(z_j) - 1)
    return (mu_i - mu_j).pow(2).mean() + (cov_i - cov_j).pow(2).mean()


def _squared_distances(a, b):
    # ||a||^2 + ||b||^2 - 2 a.b, floored at 1e-30 as DomainBed's `my_cdist` (the floor, not an
    # exact zero, is what the diagonal of K(z, z) back-propagates through)
    sq = a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1, keepdim=True).t() - 2 * a @ b.t()
    return sq.clamp_min(1e-30)


def _rbf_sum(a, b, gammas):
    d2 = _squared_distances(a, b)
    return sum(torch.exp(-gamma * d2) for gamma in gammas)


def gaussian_mmd(z_i, z_j, gammas=RBF_GAMMAS):
    """biased squared MMD under the sum of RBF kernels of bandwidths `gammas` (RDM adds 1e-4)."""
    return (_rbf_sum(z_i, z_i, gammas).mean() + _rbf_sum(z_j, z_j, gammas).mean()
            - 2 * _rbf_sum(z_i, z_j, gammas).mean())


class FeatureMatching(ERM):
    """ERM plus `mmd_gamma` times `penalty(features)`; subclasses set `distance` (a staticmethod
    of two feature matrices) and may redefine which samples `penalty` compares (here: every pair
    of domains, averaged)."""

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        # DomainBed's (CORAL, MMD and CausIRL share it)
        hparam("mmd_gamma", 1.0, lambda r: float(10 ** r.uniform(-1, 1)), valid=nonnegative_float(),
               help="weight of the feature-matching penalty (CORAL: covariances, MMD: kernel mean embeddings)")

    def penalty(self, features):
        pairs = list(itertools.combinations(features, 2))
        if not pairs:
            return features[0].new_zeros(())
        return sum(self.distance(z_i, z_j) for z_i, z_j in pairs) / len(pairs)

    def update(self, minibatches):
        features = [self.featurizer(x) for x, _ in minibatches]
        objective = sum(F.cross_entropy(self.classifier(z), y) for z, (_, y) in zip(features, minibatches))
        objective = objective / len(minibatches)
        # on every domain's whole batch under data parallelism (the statistics are the batch's)
        penalty = self.penalty([distributed.all_gather(z) for z in features])

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(objective + self.hparams["mmd_gamma"] * penalty)
        self.optimizer_step(self.optimizer)
        return {"loss": objective.detach(), "penalty": penalty.detach().to(objective.dtype)}


@register_algorithm("CORAL")
class CORAL(FeatureMatching):
    DATA_PARALLEL = True  # the penalty is computed on every domain's whole batch of features (all_gather)
    distance = staticmethod(coral_distance)
