"""CausIRL: Chevalley, Bunne, Krause & Bauer, "Invariant Causal Mechanisms through Distribution
Matching", arXiv:2206.11646 (2022), as DomainBed's `CausIRL_CORAL` / `CausIRL_MMD`.

Instead of matching domains pairwise, the pooled minibatch is cut in two, at a uniformly random
point s_i in [0, n_i) of every domain's minibatch, and the two halves are matched:

    A = concat_i z_i[:s_i],   B = concat_i z_i[s_i:]
    loss = mean_i CE(classifier(z_i), y_i) + mmd_gamma * nan_to_num(d(A, B))

with d = `coral.coral_distance` (CausIRL_CORAL) or `coral.gaussian_mmd` (CausIRL_MMD); the
penalty is 0 when either half has fewer than two rows. The classification term and the update are
CORAL's (`coral.FeatureMatching`).

Differences from DomainBed's code: the cut points come from torch's generator instead of
numpy's (same distribution; resumption restores both); DomainBed adds 1e-16 to the logits
before the cross-entropy, which changes nothing (softmax is shift-invariant) and is left out.
"""

import torch

from domainbed.algorithms.coral import FeatureMatching, coral_distance, gaussian_mmd
from domainbed.algorithms.registry import register_algorithm


class CausIRL(FeatureMatching):
    def penalty(self, features):
        cuts = [int(torch.randint(0, len(z), ())) for z in features]
        first = torch.cat([z[:s] for z, s in zip(features, cuts)])
        second = torch.cat([z[s:] for z, s in zip(features, cuts)])
        if len(first) < 2 or len(second) < 2:
            return features[0].new_zeros(())
        return torch.nan_to_num(self.distance(first, second))


@register_algorithm("CausIRL_CORAL")
class CausIRL_CORAL(CausIRL):
    DATA_PARALLEL = True  # the cut is drawn alike on every process, on the whole (gathered) batch
    distance = staticmethod(coral_distance)


@register_algorithm("CausIRL_MMD")
class CausIRL_MMD(CausIRL):
    DATA_PARALLEL = True  # as CausIRL_CORAL
    distance = staticmethod(gaussian_mmd)
