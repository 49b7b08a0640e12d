"""Backbones served by timm, under the names researchers use, and `timm:<model name>` for any other.

| backbone | timm model | weights | features |
| resnet50_augmix | resnet50.ram_in1k | ImageNet, AugMix (DomainBed's `resnet50_augmix`) | 2048 |
| dinov2_vits14, _vitb14, _vitl14 | vit_{small,base,large}_patch14_dinov2.lvd142m | DINOv2 LVD-142M | 5 x 384, 768, 1024 |
| clip_resnet50 | resnet50_clip.openai | OpenAI CLIP image tower (MIRO's) | 1024 |
| clip_vit-b16 | vit_base_patch16_clip_quickgelu_224.openai | OpenAI CLIP image tower (MIRO's) | 512 |
| swag_regnety_16gf | regnety_160.swag_lc_in1k | SWAG (MIRO's) | 3024 |
| vit_b16 | vit_base_patch16_224.augreg_in21k | ImageNet-21k | 768 |
| convnext_{tiny,small,base,large,xlarge} | convnext_*.fb_in22k_ft_in1k | ImageNet-22k, then 1k | 768 ... 2048 |

Choices, and why:
- `dinov2_*` give DomainBed's DINOv2 features (four intermediate class tokens and the mean patch
  token), what DomainBed's `--vit --dinov2` trains on; `timm:vit_base_patch14_dinov2.lvd142m`
  gives the final class token alone.
- The CLIP towers keep their projection, as MIRO's `clip_imageencoder` returns CLIP's image
  embedding (`output_dim`). timm's `quickgelu` ViT-B/16 is OpenAI's exact architecture (the plain
  `vit_base_patch16_clip_224` swaps QuickGELU for GELU).
- `swag_regnety_16gf` is the trunk MIRO loads from `facebookresearch/swag` (`regnety_16gf`,
  SWAG weights at 224 px); timm holds it as `swag_lc_in1k` (that trunk, frozen, under a linear
  ImageNet classifier, which is dropped here). `swag_ft_in1k` is a different, fine-tuned trunk at
  384 px; name it as `timm:regnety_160.swag_ft_in1k` to use it.
- `vit_b16` is the ImageNet-21k ViT-B/16 that timm's `vit_base_patch16_224_in21k` has named since
  timm 0.5 (AugReg's); `convnext_*` pin the ConvNeXt paper's 22k-to-1k weights rather than timm's
  default tag, which changes between timm versions.

Each backbone normalises its inputs as its weights were trained (`input_normalization`, from
timm's pretrained config: CLIP's mean and std, 0.5 for AugReg's ViT, ImageNet's otherwise), read
without building the model. A ViT's position embeddings are resampled to the input's grid (timm's
`set_input_size`), so 32-64 px test images work.
"""

import functools
from dataclasses import dataclass

from domainbed.errors import UsageError, first_line
from domainbed.networks.pretrained import import_timm, timm_pretrained_model
from domainbed.networks.registry import IMAGENET_MEAN, IMAGENET_STD, register_backbone, register_backbone_family
from domainbed.networks.timm_featurizer import DomainBedDINOv2, wrap

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class TimmSpec:
    timm_model: str  # timm's name with the pretrained tag
    weights: str  # what the weights are, for messages
    keep_head: bool = False  # the head is part of the features (CLIP's projection)
    dinov2_features: bool = False  # DomainBed's DINOv2 features


class TimmBackbone:
    """The registered builder of a timm model: called with (input_shape, hparams) it builds the
    featurizer; `input_normalization` comes from timm's config without building anything."""

    def __init__(self, name: str, spec: TimmSpec):
        self.name = name
        self.spec = spec

    def timm(self):
        """timm, which must know the model (older versions lack the CLIP ResNets, say)."""
        timm = import_timm(self.name)
        if not timm.is_model(self.spec.timm_model):
            raise UsageError(f"backbone {self.name} is timm's {self.spec.timm_model}, which timm {timm.__version__} "
                             "lacks; pip install --upgrade timm")
        return timm

    @property
    def input_normalization(self) -> tuple:
        cfg = self.timm().models.get_pretrained_cfg(self.spec.timm_model)
        if cfg is None:  # a model without pretrained weights
            return IMAGENET_MEAN, IMAGENET_STD
        return tuple(cfg.mean), tuple(cfg.std)

    def __call__(self, input_shape, hparams: dict):
        spec = self.spec
        self.timm()
        if hparams["pretrained"]:
            network = timm_pretrained_model(spec.timm_model, self.name, hparams, spec.weights, in_chans=input_shape[0])
        else:
            network = self.timm().create_model(spec.timm_model, pretrained=False, in_chans=input_shape[0])
        if hasattr(network, "set_input_size"):  # a ViT: position embeddings resampled to the input's grid
            network.set_input_size(img_size=tuple(input_shape[1:3]))
        if spec.dinov2_features:
            return DomainBedDINOv2(network, hparams)
        if not spec.keep_head:
            network.reset_classifier(0)
        return wrap(network, hparams, spec.keep_head)


def _register(name: str, spec: TimmSpec) -> None:
    register_backbone(name)(TimmBackbone(name, spec))


_register("resnet50_augmix", TimmSpec("resnet50.ram_in1k", "ImageNet (AugMix) weights"))
for _size, _width in (("s", "small"), ("b", "base"), ("l", "large")):
    _register(f"dinov2_vit{_size}14", TimmSpec(f"vit_{_width}_patch14_dinov2.lvd142m", "DINOv2 weights",
                                               dinov2_features=True))
_register("clip_resnet50", TimmSpec("resnet50_clip.openai", "OpenAI CLIP weights", keep_head=True))
_register("clip_vit-b16", TimmSpec("vit_base_patch16_clip_quickgelu_224.openai", "OpenAI CLIP weights",
                                   keep_head=True))
_register("swag_regnety_16gf", TimmSpec("regnety_160.swag_lc_in1k", "SWAG weights"))
_register("vit_b16", TimmSpec("vit_base_patch16_224.augreg_in21k", "ImageNet-21k weights"))
for _size in ("tiny", "small", "base", "large", "xlarge"):
    _register(f"convnext_{_size}", TimmSpec(f"convnext_{_size}.fb_in22k_ft_in1k", "ImageNet-22k weights"))


@register_backbone_family(TIMM_PREFIX)
@functools.lru_cache(maxsize=None)
def timm_backbone(timm_model: str) -> TimmBackbone:
    """The builder of `timm:<timm_model>` (a timm name, with or without a pretrained tag)."""
    name = TIMM_PREFIX + timm_model
    timm = import_timm(name)
    if not timm.is_model(timm_model):
        raise UsageError(f"unknown backbone {name!r}: timm {timm.__version__} has no model {timm_model!r}; valid: "
                         f"{TIMM_PREFIX}NAME for a NAME of timm.list_models()")
    try:
        timm.models.get_pretrained_cfg(timm_model)
    except RuntimeError as error:  # an unknown pretrained tag
        raise UsageError(f"unknown backbone {name!r}: {first_line(error)}; valid: a tag of "
                         f"timm.list_pretrained({timm_model.split('.')[0]!r})") from None
    return TimmBackbone(name, TimmSpec(timm_model, f"timm's {timm_model} weights"))
