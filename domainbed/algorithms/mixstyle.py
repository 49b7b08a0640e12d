"""MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021), as SWAD's `Mixstyle`.

Feature statistics carry style. With probability p per forward pass, MixStyle re-normalises a
training batch's feature maps x (B, C, H, W) with per-instance statistics mixed with those of a
randomly shuffled partner (the variant without domain labels, "random shuffle"):

    mu, sigma  = mean and sqrt(var + eps) of x over (H, W), per instance and channel (no gradient)
    lambda     ~ Beta(alpha, alpha) per instance;  perm = a random permutation of the batch
    mu_mix     = lambda * mu + (1 - lambda) * mu[perm]   (sigma_mix likewise)
    MixStyle(x) = sigma_mix * (x - mu) / sigma + mu_mix

It acts after the first three stages of the ResNet (layer1, layer2, layer3; SWAD's
`resnet*_mixstyle_L234_p0d5_a0d1`: p = 0.5, alpha = 0.1, eps = 1e-6) and is the identity at
evaluation. Training is otherwise ERM on the concatenated minibatches.

Differences from SWAD's code (khanrc/swad, domainbed/models/resnet_mixstyle.py, mixstyle.py):
- SWAD builds its own copy of the ResNet; we attach MixStyle as forward hooks on the registry's
  torchvision ResNet (same layers, same ImageNet weights, the featurizer's dropout and frozen
  BatchNorm as SWAD's wrapper), so every backbone option and `--quant` apply unchanged.
- SWAD asserts 224 x 224 inputs; any image size works here. On DomainBed's MNIST CNN (the
  harness's 28 x 28 datasets) MixStyle follows the first three of its four conv blocks, the
  analogue of ResNet's first three stages; SWAD has no such case.
- The coin flip uses torch's generator instead of python's `random`, so the run's torch seed
  alone fixes every MixStyle draw. All draws are made on the host (CPU generator) and copied to
  the device without blocking, so a forward pass never waits for the device.
"""

import torch
import torch.nn as nn

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.errors import UsageError
from domainbed.hparams.rules import fraction, positive_float


class MixStyle(nn.Module):
    def __init__(self, p: float, alpha: float, eps: float = 1e-6):
        super().__init__()
        self.p = p
        self.alpha = alpha
        self.eps = eps

    def forward(self, x):
        if not self.training or torch.rand(()).item() > self.p:
            return x
        batch = x.size(0)
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sigma = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        # drawn on the host, then copied without blocking: the step never waits for the device
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((batch, 1, 1, 1)).to(x.device, x.dtype,
                                                                                            non_blocking=True)
        perm = self.partners(batch).to(x.device, non_blocking=True)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sigma_mix = lam * sigma + (1 - lam) * sigma[perm]
        return sigma_mix * (x - mu) / sigma + mu_mix

    def partners(self, batch: int) -> torch.Tensor:
        """perm: whose statistics each instance mixes with (here any other, at random)."""
        return torch.randperm(batch)

    def after(self, module, args, output):
        """Forward hook: MixStyle applied to `module`'s output."""
        return self(output)

    def extra_repr(self):
        return f"p={self.p}, alpha={self.alpha}, eps={self.eps}"


def mixstyle_sites(featurizer) -> list:
    """The modules MixStyle follows: the featurizer's `style_sites()` (ResNet's layer1-3, the
    MNIST CNN's first three blocks; domainbed/networks/registry.py)."""
    if not hasattr(featurizer, "style_sites"):
        raise UsageError(f"Mixstyle mixes the statistics of a CNN's feature maps and {type(featurizer).__name__} has "
                         "no style_sites(); valid: a ResNet, RegNet or ConvNeXt backbone (docs/backbones.md) or "
                         "28x28 inputs")
    return featurizer.style_sites()


@register_algorithm("Mixstyle")
class Mixstyle(ERM):
    CONTRACT_INPUT = "images"  # mixes the statistics of ResNet stages' feature maps (Mixstyle2 inherits it)

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        # SWAD's resnet*_mixstyle_L234_p0d5_a0d1 (Mixstyle2 inherits them)
        hparam("mixstyle_p", 0.5, valid=fraction(high_open=False), help="probability of mixing feature statistics in a forward pass")
        hparam("mixstyle_alpha", 0.1, lambda r: float(r.choice([0.1, 0.2, 0.3])), valid=positive_float(),
               help="Beta(alpha, alpha) parameter of the mixing weight")
    style_mixer = MixStyle  # the module the hooks apply; Mixstyle2 uses the cross-domain one

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.mixstyle = self.style_mixer(hparams["mixstyle_p"], hparams["mixstyle_alpha"])
        # a bound method of the module, so that a deep copy of the algorithm (weight averaging)
        # hooks its own MixStyle, which follows the copy's train/eval mode
        for site in mixstyle_sites(self.featurizer):
            site.register_forward_hook(self.mixstyle.after)
