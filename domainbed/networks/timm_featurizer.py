"""A timm model as a featurizer, with the backbone contract's hooks where its architecture has them.

Convolutional networks (timm's ResNet, RegNet, ConvNeXt and ByobNet classes, whose stages map
(B, C, H, W) to (B, C', H', W')): `feature_map` is timm's `forward_features` (the last map) and
`pool` timm's head up to the features (global pooling, or CLIP ResNet's attention pooling and
projection) followed by dropout (`resnet_dropout`). The stem and the stages are `stage_sites`
(MIRO), the first three stages `style_sites` (MixStyle, after layer1-3 as on torchvision's
ResNets), the inputs of the last two stages `mask_sites` (DMG, one mask per channel; `layer3`,
`layer4` on ResNets, `s3`, `s4` on RegNets, `stage3`, `stage4` for timm's `stages.2`, `stages.3`). With
`freeze_bn` and pretrained weights BatchNorm layers stay in eval mode, as in resnet.py.

Vision transformers (timm's VisionTransformer class: DeiT, DINOv2, CLIP, AugReg): the features
are the final class token (CLIP's projected to its image embedding where the head is kept),
with `vit_dropout`, DomainBed's dropout on a ViT's features. `stage_sites` are the patch
embedding and the last block of each quarter of the blocks, the blocks MIRO reads on CLIP's
ViT-B/16 (2, 5, 8, 11 of 12). A ViT has no spatial map whose pooling gives its features (the class
token attends to the patches, it is not their pool), so it offers no `feature_map`/`pool`
(RSC challenges the features' channels), no `style_sites` and no `mask_sites` (DMG masks `fc`).

DomainBed's DINOv2 features (`DomainBedDINOv2`): the normalised class tokens of the last four
blocks and the mean of the last block's normalised patch tokens, concatenated (5 x width), as
DomainBed's `DinoV2` featurizer computes them with DINOv2's `get_intermediate_layers`.

Any other timm class is a plain featurizer: `forward` only, so methods that need a hook refuse it.
"""

import torch
import torch.nn as nn

from domainbed.networks.resnet import freeze_batchnorm

# timm class -> (the module that ends the stem, the stage modules), for the networks above;
# a callable gets the model (the number of stages varies)
CONV_STAGES = {
    "ResNet": lambda m: ("maxpool", ["layer1", "layer2", "layer3", "layer4"]),
    "RegNet": lambda m: ("stem", ["s1", "s2", "s3", "s4"]),
    "ConvNeXt": lambda m: ("stem", [f"stages.{i}" for i in range(len(m.stages))]),
    "ByobNet": lambda m: ("stem", [f"stages.{i}" for i in range(len(m.stages))]),
}
VIT_CLASSES = ("VisionTransformer",)
N_STAGES = 4  # MIRO's blocks 1-4


def feature_width(network: nn.Module, keep_head: bool) -> int:
    if keep_head:
        return network.num_classes
    return getattr(network, "head_hidden_size", None) or network.num_features


def evenly_spaced_blocks(n_blocks: int) -> list:
    """Indices of the last block of each quarter of `n_blocks` (every block when fewer than 4)."""
    return sorted({max(0, (k + 1) * n_blocks // N_STAGES - 1) for k in range(N_STAGES)})


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


class TimmConvNet(nn.Module):
    def __init__(self, network: nn.Module, hparams: dict, keep_head: bool = False):
        super().__init__()
        self.network = network
        self.keep_head = keep_head
        self.n_outputs = feature_width(network, keep_head)
        self.stem_name, self.stage_names = CONV_STAGES[type(network).__name__](network)
        self.dropout = nn.Dropout(hparams["resnet_dropout"])
        self.freeze_bn = bool(hparams["freeze_bn"]) and bool(hparams["pretrained"])
        self.train()

    def feature_map(self, x):
        return self.network.forward_features(x)

    def pool(self, z):
        return self.dropout(self.network.forward_head(z, pre_logits=not self.keep_head))

    def forward(self, x):
        return self.pool(self.feature_map(x))

    def _stages(self) -> list:
        return [self.network.get_submodule(name) for name in self.stage_names]

    def stage_sites(self) -> list:
        return [self.network.get_submodule(self.stem_name), *self._stages()]

    def style_sites(self) -> list:
        return self._stages()[:3]

    def mask_sites(self) -> dict:
        """The last two stages, whose input channels DMG masks: named as timm names them (`layer3`,
        `s3`), or `stage3` for timm's `stages.2` (DMG's names cannot hold a dot)."""
        named = [(name if "." not in name else f"stage{index + 1}", stage)
                 for index, (name, stage) in enumerate(zip(self.stage_names, self._stages()))]
        return {name: (stage, _first_conv(stage).in_channels) for name, stage in named[-2:]}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self.network)
        return self


class TimmViT(nn.Module):
    def __init__(self, network: nn.Module, hparams: dict, keep_head: bool = False):
        super().__init__()
        self.network = network
        self.n_outputs = feature_width(network, keep_head)
        self.dropout = nn.Dropout(hparams["vit_dropout"])

    def forward(self, x):
        return self.dropout(self.network(x))

    def stage_sites(self) -> list:
        blocks = self.network.blocks
        return [self.network.patch_embed, *(blocks[i] for i in evenly_spaced_blocks(len(blocks)))]


class DomainBedDINOv2(TimmViT):
    N_LAYERS = 4

    def __init__(self, network: nn.Module, hparams: dict):
        super().__init__(network, hparams)
        self.n_outputs = (self.N_LAYERS + 1) * network.embed_dim

    def forward(self, x):
        layers = self.network.get_intermediate_layers(x, n=self.N_LAYERS, return_prefix_tokens=True, norm=True)
        class_tokens = [prefix[:, 0] for _, prefix in layers]
        return self.dropout(torch.cat([*class_tokens, layers[-1][0].mean(1)], dim=1))


class TimmPlain(nn.Module):
    def __init__(self, network: nn.Module, hparams: dict, keep_head: bool = False):
        super().__init__()
        self.network = network
        self.n_outputs = feature_width(network, keep_head)
        self.dropout = nn.Dropout(hparams["resnet_dropout"])

    def forward(self, x):
        return self.dropout(self.network(x))


def wrap(network: nn.Module, hparams: dict, keep_head: bool = False) -> nn.Module:
    """The featurizer for a timm `network` (its head already removed unless `keep_head`)."""
    kind = type(network).__name__
    if kind in CONV_STAGES:
        return TimmConvNet(network, hparams, keep_head)
    if kind in VIT_CLASSES:
        return TimmViT(network, hparams, keep_head)
    return TimmPlain(network, hparams, keep_head)
