"""ARM: Adaptive Risk Minimization, the contextual meta-learner ARM-CML (Zhang, Marklund, Dhawan,
Gupta, Levine, Finn, "Adaptive Risk Minimization: Learning to Adapt to Domain Shift", NeurIPS
2021), as DomainBed's ARM.

A context network c maps every image of a batch to a one-channel map; the maps are averaged
over each group of `batch_size` images (one domain's minibatch in training: the pooled batch of
n domains is n groups; at evaluation a batch whose size is not a multiple is one group), and the
group's mean map is appended to each of its images as an extra input channel:

    f([x, mean_{x' in group(x)} c(x')])    trained with ERM's cross-entropy.

c is DomainBed's ContextNet: three 5x5 convolutions (64, 64, 1 channels, BatchNorm and ReLU
between). Hparam: `batch_size` is the support size (DomainBed fixes it to 8 on large images).

Departures from DomainBed's code (algorithms.ARM): the context network is optimised with the
rest, as the paper trains it. In DomainBed's code the optimizer is built by ERM's constructor
over `self.network` before the context network exists, so (as we read it) the context network
keeps its initial weights; the contract (every trainable parameter in an optimizer) rules that
out here.
"""

import torch
import torch.nn as nn

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.errors import UsageError
from domainbed.hparams.declare import SMALL_IMAGES


def context_net(in_channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 1, 5, padding=2),
    )


@register_algorithm("ARM")
class ARM(ERM):
    CONTRACT_INPUT = "images"  # its context network is convolutional

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        if dataset not in SMALL_IMAGES:  # DomainBed: the support size is fixed on large images
            hparam("batch_size", 8)
    def __init__(self, input_shape, num_classes, num_domains, hparams):
        if len(input_shape) != 3:
            raise UsageError(f"ARM needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
        super().__init__((input_shape[0] + 1, *input_shape[1:]), num_classes, num_domains, hparams)
        self.input_shape = tuple(input_shape)
        self.context_net = context_net(input_shape[0])
        self.optimizer = self.new_optimizer([*self.network.parameters(), *self.context_net.parameters()])
        self.support_size = hparams["batch_size"]

    def predict(self, x, env=None):
        batch, _, height, width = x.shape
        support = self.support_size if batch % self.support_size == 0 else batch
        context = self.context_net(x).reshape(batch // support, support, 1, height, width).mean(1)
        context = context.repeat_interleave(support, dim=0)
        return self.network(torch.cat([x, context.to(x.dtype)], 1))
