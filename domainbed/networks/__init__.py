"""Featurizers (backbones) and heads.

`Featurizer(input_shape, hparams)` picks DomainBed's MLP for flat inputs, DomainBed's MNIST CNN
for (C, 28, 28) images, and the registered backbone `hparams["backbone"]` otherwise. Modules of
this package that register backbones are imported automatically, so a new backbone is one new
file with a `@register_backbone("name")` builder.
"""

import importlib
import pkgutil

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


__all__ = ["BACKBONES", "Classifier", "Featurizer", "MLP", "MNIST_CNN", "get_backbone", "register_backbone"]
