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
"""

from domainbed.registry import Registry

_BACKBONES = Registry("backbone")
BACKBONES = _BACKBONES.entries
register_backbone = _BACKBONES.register
get_backbone = _BACKBONES.get
