"""An algorithm's training-only parts: the submodules its `TRAINING_ONLY` names, which `update`
uses and `predict` never does (MIRO's frozen copy of the pretrained featurizer and its variance
encoders; see domainbed/algorithms/base.py). What predicts (weight averages, saved final models,
the quantized model and its size) leaves them out; checkpoints for resuming keep them.

Read from the `TRAINING_ONLY` attribute rather than by testing for `Algorithm`, so that the
modules below the algorithms (averaging, quantization, model files) need not import them.
"""

import torch.nn as nn


def training_only_parts(model: nn.Module) -> dict:
    """{attribute name: submodule} of the training-only parts `model` holds (a copy for prediction
    holds None there); {} for a module that declares none."""
    names = getattr(model, "TRAINING_ONLY", ())
    return {name: getattr(model, name) for name in names if getattr(model, name, None) is not None}


def prediction_state_dict(model: nn.Module, keep_vars: bool = False) -> dict:
    """`model.state_dict()` without the entries of its training-only parts: what a saved model keeps."""
    prefixes = tuple(f"{name}." for name in training_only_parts(model))
    return {key: value for key, value in model.state_dict(keep_vars=keep_vars).items()
            if not key.startswith(prefixes)}


def load_prediction_state(model: nn.Module, state: dict) -> None:
    """`model.load_state_dict(state)`, strict, but the entries of `model`'s training-only parts
    that `state` lacks (a saved model's, `prediction_state_dict`) keep their values."""
    prefixes = tuple(f"{name}." for name in training_only_parts(model))
    own = {key: value for key, value in model.state_dict().items() if key.startswith(prefixes)}
    model.load_state_dict({**own, **state})
