"""The backbone registry: `hparams["backbone"]` names a builder registered here.

A builder takes `(input_shape, hparams)` and returns a featurizer module with `n_outputs`
(features per sample). Featurizers with a spatial map also offer `feature_map(x)` (the last map
before global pooling) and `pool(z)` (pooling, flattening and dropout), with
`forward(x) == pool(feature_map(x))`.
"""

from domainbed.errors import unknown_name

BACKBONES = {}


def register_backbone(name: str):
    def decorator(builder):
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = builder
        return builder

    return decorator


def get_backbone(name: str):
    if name not in BACKBONES:
        raise unknown_name("backbone", name, sorted(BACKBONES))
    return BACKBONES[name]
