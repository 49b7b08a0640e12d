"""Featurizers (backbones) and heads.

`Featurizer(input_shape, hparams)` picks DomainBed's MLP for flat inputs, DomainBed's MNIST CNN
for (C, 28, 28) images, and the registered backbone `hparams["backbone"]` otherwise. Modules of
this package that register backbones are imported automatically, so a new backbone is one new
file with a `@register_backbone("name")` builder.
"""

import importlib
import pkgutil

from domainbed.hparams.declare import common_hparams
from domainbed.hparams.rules import fraction, int_at_least, satisfies
from domainbed.networks.classifier import Classifier
from domainbed.networks.mlp import MLP
from domainbed.networks.mnist_cnn import MNIST_CNN
from domainbed.networks.registry import BACKBONES, get_backbone, register_backbone

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def Featurizer(input_shape, hparams: dict):
    if len(input_shape) == 1:
        return MLP(input_shape[0], hparams["mlp_width"], hparams)
    if tuple(input_shape[1:3]) == (28, 28):
        return MNIST_CNN(input_shape)
    return get_backbone(hparams["backbone"])(input_shape, hparams)


@common_hparams
def _network_hparams(hparam, dataset):
    hparam("backbone", "resnet50", valid=satisfies("a registered backbone: " + ", ".join(sorted(BACKBONES)),
                                                   get_backbone),
           help="featurizer for images (inputs of length 1 get an MLP, 28x28 the MNIST CNN)")
    hparam("pretrained", True, help="start the backbone from ImageNet weights")
    hparam("pretrained_path", "", help="a local file of backbone weights to load instead of the torchvision download")
    hparam("freeze_bn", True, help="keep BatchNorm layers in eval mode while training (SWAD's default)")
    hparam("resnet_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), valid=fraction(),
           help="dropout on the backbone's pooled features")
    hparam("nonlinear_classifier", False, help="a two-layer MLP head instead of one linear layer")
    hparam("mlp_width", 256, lambda r: int(2 ** r.uniform(6, 10)), valid=int_at_least(1),
           help="hidden units of the MLP featurizer (1-d inputs)")
    # input and output layers; mlp_depth - 2 hidden ones, as DomainBed
    hparam("mlp_depth", 3, lambda r: int(r.choice([3, 4, 5])), valid=int_at_least(2),
           help="layers of the MLP featurizer (1-d inputs)")
    hparam("mlp_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), valid=fraction(),
           help="dropout between the MLP featurizer's layers (1-d inputs)")


__all__ = ["BACKBONES", "Classifier", "Featurizer", "MLP", "MNIST_CNN", "get_backbone", "register_backbone"]
