"""torchvision ResNets as featurizers, as SWAD builds them.

The classification layer is replaced by the identity, `resnet_dropout` follows global pooling,
and with `freeze_bn` (default) every BatchNorm layer stays in eval mode even while training:
running statistics keep their ImageNet values while the affine parameters still learn. Frozen
statistics only make sense when they come from pretraining: with `pretrained` False they would
be the initial mean 0 and variance 1 and leave a deep network unnormalised, so a network trained
from scratch keeps its BatchNorm layers training (SWAD would freeze them regardless).
Inputs with other than three channels get a first convolution whose filters cycle through the
pretrained RGB ones, as DomainBed does.
"""

import torch
import torch.nn as nn
import torchvision

from domainbed.networks.pretrained import load_pretrained_state
from domainbed.networks.registry import register_backbone


class ResNet(nn.Module):
    def __init__(self, network: torchvision.models.ResNet, input_shape, hparams: dict):
        super().__init__()
        self.n_outputs = network.fc.in_features
        n_channels = input_shape[0]
        if n_channels != 3:
            rgb = network.conv1.weight.data.clone()
            network.conv1 = nn.Conv2d(n_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            for channel in range(n_channels):
                network.conv1.weight.data[:, channel] = rgb[:, channel % 3]
        network.fc = nn.Identity()
        self.network = network
        self.dropout = nn.Dropout(hparams["resnet_dropout"])
        self.freeze_bn = bool(hparams["freeze_bn"]) and bool(hparams["pretrained"])
        self.train()

    def feature_map(self, x):
        net = self.network
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def pool(self, z):
        return self.dropout(torch.flatten(self.network.avgpool(z), 1))

    def forward(self, x):
        return self.pool(self.feature_map(x))

    def mask_sites(self) -> dict:
        """layer3 and layer4, whose input channels DMG masks."""
        net = self.network
        return {name: (getattr(net, name), getattr(net, name)[0].conv1.in_channels) for name in ("layer3", "layer4")}

    def style_sites(self) -> list:
        """layer1-3, after which MixStyle mixes channel statistics (Zhou et al.'s placement)."""
        return [self.network.layer1, self.network.layer2, self.network.layer3]

    def stage_sites(self) -> list:
        """The stem (its max pooling closes it) and layer1-4, MIRO's feature layers for ResNets."""
        net = self.network
        return [net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self.network)
        return self


def freeze_batchnorm(network: nn.Module) -> None:
    """Keep `network`'s BatchNorm layers in eval mode (their pretrained statistics), as SWAD's
    `freeze_bn`: called after `train()`, which sets every submodule's mode."""
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def _builder(name: str, constructor, weights):
    def build(input_shape, hparams):
        network = constructor(weights=None)
        if hparams["pretrained"]:
            network.load_state_dict(load_pretrained_state(weights, name, hparams))
        return ResNet(network, input_shape, hparams)

    return register_backbone(name)(build)


_builder("resnet18", torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
_builder("resnet34", torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1)
_builder("resnet50", torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
_builder("resnet101", torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1)
