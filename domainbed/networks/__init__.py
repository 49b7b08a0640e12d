"""Featurizers (backbones) and heads.

`Featurizer(input_shape, hparams)` picks DomainBed's MLP for flat inputs, DomainBed's MNIST CNN
for (C, 28, 28) images, and the registered backbone `hparams["backbone"]` otherwise (or the one
DomainBed's switches select: domainbed_switches.py). `input_normalization(hparams)` is the mean
and std that backbone expects of its inputs, known without building it. Modules of this package
that register backbones are imported automatically, so a new backbone is one new file with a
`@register_backbone("name")` builder. docs/backbones.md lists them.
"""

import importlib
import pkgutil

from domainbed.errors import UsageError
from domainbed.hparams.declare import common_hparams
from domainbed.hparams.rules import fraction, int_at_least, satisfies
from domainbed.networks.classifier import Classifier
from domainbed.networks.domainbed_switches import selected_backbone
from domainbed.networks.mlp import MLP
from domainbed.networks.mnist_cnn import MNIST_CNN
from domainbed.networks.registry import (BACKBONES, builder_normalization, get_backbone, register_backbone,
                                         register_backbone_family, valid_backbones)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def Featurizer(input_shape, hparams: dict):
    if len(input_shape) == 1:
        return MLP(input_shape[0], hparams["mlp_width"], hparams)
    if tuple(input_shape[1:3]) == (28, 28):
        return MNIST_CNN(input_shape)
    name = selected_backbone(hparams)
    featurizer = get_backbone(name)(input_shape, hparams)
    if hparams.get("vit_attn_tune", False):
        tune_attention_only(featurizer, name)
    return featurizer


def tune_attention_only(featurizer, name: str) -> None:
    """DomainBed's `vit_attn_tune`: only parameters with `attn` in their name keep training."""
    attention = [p for n, p in featurizer.named_parameters() if "attn" in n]
    if not attention:
        raise UsageError(f"hparam vit_attn_tune True trains a ViT's attention layers only, and backbone {name} has "
                         "none; valid here: False")
    for n, p in featurizer.named_parameters():
        p.requires_grad_("attn" in n)


def input_normalization(hparams: dict) -> tuple:
    """(mean, std) per channel that the backbone `hparams` select expects of its inputs."""
    return builder_normalization(get_backbone(selected_backbone(hparams)))


@common_hparams
def _network_hparams(hparam, dataset):
    hparam("backbone", "resnet50", valid=satisfies("a registered backbone: " + valid_backbones(), get_backbone),
           help="featurizer for images (inputs of length 1 get an MLP, 28x28 the MNIST CNN)")
    hparam("pretrained", True, help="start the backbone from its pretrained weights (docs/backbones.md)")
    hparam("pretrained_path", "",
           help="a local file of the backbone's weights (.pth or .safetensors) instead of the cache or a download")
    hparam("freeze_bn", True, help="keep BatchNorm layers in eval mode while training (SWAD's default)")
    hparam("resnet_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), valid=fraction(),
           help="dropout on the backbone's pooled features (timm's ViTs but deit_small: vit_dropout)")
    hparam("nonlinear_classifier", False, help="a two-layer MLP head instead of one linear layer")
    hparam("mlp_width", 256, lambda r: int(2 ** r.uniform(6, 10)), valid=int_at_least(1),
           help="hidden units of the MLP featurizer (1-d inputs)")
    # input and output layers; mlp_depth - 2 hidden ones, as DomainBed
    hparam("mlp_depth", 3, lambda r: int(r.choice([3, 4, 5])), valid=int_at_least(2),
           help="layers of the MLP featurizer (1-d inputs)")
    hparam("mlp_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), valid=fraction(),
           help="dropout between the MLP featurizer's layers (1-d inputs)")


@common_hparams
def _domainbed_backbone_hparams(hparam, dataset):
    # DomainBed's names, with its defaults and draws but resnet50_augmix's (domainbed_switches.py)
    hparam("resnet50_augmix", False,
           help="DomainBed's switch: backbone resnet50_augmix (timm's resnet50.ram_in1k) instead of resnet50")
    hparam("vit", False, help="DomainBed's switch: with dinov2 True, backbone dinov2_vitb14")
    hparam("dinov2", False, help="DomainBed's switch: with vit True, backbone dinov2_vitb14")
    hparam("vit_attn_tune", False, help="train only the backbone's attention layers (parameters named *attn*)")
    hparam("vit_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), valid=fraction(),
           help="dropout on the features of a ViT from timm but deit_small (CNNs: resnet_dropout)")


__all__ = ["BACKBONES", "Classifier", "Featurizer", "MLP", "MNIST_CNN", "get_backbone", "input_normalization",
           "register_backbone", "register_backbone_family", "selected_backbone"]
