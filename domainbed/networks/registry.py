"""The backbone registry: `hparams["backbone"]` names a builder registered here.

A builder takes `(input_shape, hparams)` and returns a featurizer module with `n_outputs`
(features per sample). Featurizers with a spatial map also offer `feature_map(x)` (the last map
before global pooling) and `pool(z)` (pooling, flattening and dropout), with
`forward(x) == pool(feature_map(x))`.

What algorithms may ask a featurizer, instead of testing its class (each method optional; an
algorithm that needs one a backbone lacks raises a UsageError):

- `feature_map(x)`, `pool(z)`: as above (RSC).
- `mask_sites()`: {name: (module, width)}, the modules whose input DMG may mask per unit
  (channel for maps), with that input's width.
- `style_sites()`: [module, ...], the modules after whose output feature statistics may be
  mixed (MixStyle: ResNet's layer1-3, the MNIST CNN's first three blocks).
- `stage_sites()`: [module, ...] in forward order, whose outputs are the backbone's intermediate
  features, the stem and each stage (ResNet: maxpool, layer1-4; a ViT: the patch embedding and
  evenly spaced blocks, as MIRO picks them); MIRO regularises these outputs.
- `input_normalization`: (mean, std) per channel that the backbone's pretrained weights expect
  (ImageNet's unless declared; CLIP's differ). Read from the backbone's builder before the model
  exists, so both input pipelines normalise for it.

Besides names, a family of backbones may claim every name with a prefix
(`@register_backbone_family("timm:")`): its factory turns the rest of the name into a builder.
"""

from domainbed.errors import UsageError
from domainbed.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BACKBONES = Registry("backbone")
BACKBONES = _BACKBONES.entries
register_backbone = _BACKBONES.register
# prefix -> factory(rest of the name) -> builder
FAMILIES = {}


def register_backbone_family(prefix: str):
    """Decorator: `factory(rest)` builds the builder of the backbone named `prefix + rest`."""

    def decorator(factory):
        if prefix in FAMILIES:
            raise ValueError(f"backbone family {prefix!r} is registered twice")
        FAMILIES[prefix] = factory
        return factory

    return decorator


def get_backbone(name: str):
    """The builder of backbone `name`; an unknown name is a UsageError listing the valid ones."""
    for prefix, factory in FAMILIES.items():
        if isinstance(name, str) and name.startswith(prefix):
            if not name[len(prefix):]:
                raise UsageError(f"backbone {name!r} names no model; valid: {prefix}<model name>")
            return factory(name[len(prefix):])
    return _BACKBONES.get(name)


def valid_backbones() -> str:
    """The registered names and the families' patterns, for error messages and --help."""
    return ", ".join([*sorted(BACKBONES), *(f"{prefix}<model name>" for prefix in FAMILIES)])


def builder_normalization(builder) -> tuple:
    """(mean, std) that `builder`'s backbone expects: its `input_normalization`, else ImageNet's."""
    mean, std = getattr(builder, "input_normalization", None) or (IMAGENET_MEAN, IMAGENET_STD)
    return tuple(map(float, mean)), tuple(map(float, std))
