"""The backbone registry: `hparams["backbone"]` names a builder registered here.

A builder takes `(input_shape, hparams)` and returns a featurizer module with `n_outputs`
(features per sample). Featurizers with a spatial map also offer `feature_map(x)` (the last map
before global pooling) and `pool(z)` (pooling, flattening and dropout), with
`forward(x) == pool(feature_map(x))`.
"""

from domainbed.registry import Registry

_BACKBONES = Registry("backbone")
BACKBONES = _BACKBONES.entries
register_backbone = _BACKBONES.register
get_backbone = _BACKBONES.get
