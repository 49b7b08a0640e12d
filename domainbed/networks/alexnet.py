"""torchvision's AlexNet as a featurizer, for the AlexNet rows of the RSC and DMG papers.

The featurizer is AlexNet up to the output of fc7 (4096 features, after its ReLU); the
method's head plays fc8. DMG's official code masks the inputs of fc6, fc7 and fc8
(`classifier.1`, `classifier.4`, `classifier.6` of torchvision's AlexNet): `mask_sites()`
names the first two, the third is the head's input. Inputs with other than three channels get
a first convolution whose filters cycle through the pretrained RGB ones, as for the ResNets.
AlexNet needs images of at least 63 pixels: smaller ones vanish in its pooling layers.
"""

import torch
import torch.nn as nn
import torchvision

from domainbed.networks.pretrained import load_pretrained_state
from domainbed.networks.registry import register_backbone

FC6, FC7, FC8 = 1, 4, 6  # positions of the linear layers in torchvision's `classifier`
# positions in torchvision's `features` of the layers that close each convolution block: pool1,
# pool2, relu3, relu4, pool5
STAGE_ENDS = (2, 5, 7, 9, 12)


class AlexNet(nn.Module):
    """`feature_map` is pool5 (after the adaptive 6x6 pooling), (B, 256, 6, 6); `pool` flattens
    it and runs fc6 and fc7 with their dropout, so that RSC challenges pool5 as the official
    AlexNet code does and `forward(x) == pool(feature_map(x))` still holds."""

    def __init__(self, network: torchvision.models.AlexNet, input_shape):
        super().__init__()
        n_channels = input_shape[0]
        if n_channels != 3:
            rgb = network.features[0]
            conv = nn.Conv2d(n_channels, rgb.out_channels, rgb.kernel_size, rgb.stride, rgb.padding)
            for channel in range(n_channels):
                conv.weight.data[:, channel] = rgb.weight.data[:, channel % 3]
            conv.bias.data.copy_(rgb.bias.data)
            network.features[0] = conv
        self.n_outputs = network.classifier[FC8].in_features
        network.classifier[FC8] = nn.Identity()
        self.network = network

    def feature_map(self, x):
        return self.network.avgpool(self.network.features(x))

    def pool(self, z):
        return self.network.classifier(torch.flatten(z, 1))

    def forward(self, x):
        return self.pool(self.feature_map(x))

    def mask_sites(self) -> dict:
        """name -> (module whose input DMG masks, width of that input)."""
        classifier = self.network.classifier
        return {
            "fc6": (classifier[FC6], classifier[FC6].in_features),
            "fc7": (classifier[FC7], classifier[FC7].in_features),
        }

    def stage_sites(self) -> list:
        """The ends of the five convolution blocks, conv1's pooling being the stem (MIRO's feature
        layers; the ReLUs work in place, and their output is what the next convolution reads)."""
        return [self.network.features[index] for index in STAGE_ENDS]


@register_backbone("alexnet")
def build(input_shape, hparams):
    network = torchvision.models.alexnet(weights=None)
    if hparams["pretrained"]:
        weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
        network.load_state_dict(load_pretrained_state(weights, "alexnet", hparams))
    return AlexNet(network, input_shape)
