"""MMD: Li, Pan, Wang & Kot, "Domain Generalization with Adversarial Feature Learning" (MMD-AAE),
CVPR 2018, as DomainBed runs it: ERM plus the squared maximum mean discrepancy between the
features of every pair of training domains, under a sum of seven Gaussian kernels
(`coral.gaussian_mmd`); the penalty machinery is CORAL's (`coral.FeatureMatching`).

    loss = mean_i CE(classifier(z_i), y_i) + mmd_gamma * mean_{i<j} MMD^2(z_i, z_j)

Like DomainBed (and unlike the paper) there is no adversarial autoencoder and no prior-matching
term: only the MMD penalty on the featurizer's output.

Differences from DomainBed's code: none in the computation; the penalty is returned as a python
float even with a single training domain (DomainBed returns the int 0 there).
"""

from domainbed.algorithms.coral import FeatureMatching, gaussian_mmd
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("MMD")
class MMD(FeatureMatching):
    DATA_PARALLEL = True  # the kernels are computed on every domain's whole batch of features (all_gather)
    distance = staticmethod(gaussian_mmd)
