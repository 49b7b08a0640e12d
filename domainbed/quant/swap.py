"""Swapping a model's float layers for LSQ-quantized ones, in place.

Every `nn.Conv2d` (and, with `q_linear`, every `nn.Linear`) becomes a `QuantConv2d` /
`QuantLinear` sharing its Parameters. Only layers of exactly those types are swapped: subclasses
such as MultiheadAttention's output projection read their weight directly and would bypass the
quantizer. A layer reachable under several names (ERM's `featurizer` is also `network.0`) is
swapped once and replaced under all of them.

Differences from QT-DoG's code (domainbed/quan/utils.py): layers to keep in float are named by
`exclude` with full dotted names or prefixes of them, and an `exclude` entry that names no
quantizable layer is an error rather than a logged warning. QT-DoG's config lists `conv1` and
`fc` as exceptions, but its module names are `featurizer.network.conv1`, so nothing matches and
every convolution, the stem included, ends up quantized; our default (no exclusions) does the
same on purpose.

An algorithm's training-only parts (`Algorithm.TRAINING_ONLY`: MIRO's frozen copy of the
pretrained featurizer) are no part of the model that predicts, so they stay in float: their
layers are neither swapped nor listed.
"""

import torch.nn as nn

from domainbed.training_only import training_only_parts
from domainbed.errors import UsageError
from domainbed.quant.lsq import check_bits
from domainbed.quant.modules import QuantConv2d, QuantLinear


def quantizable_names(model: nn.Module, q_linear: bool = False) -> list:
    """Names of the layers `quantize_model` would swap, each layer under its first name."""
    return [names[0] for _, names in _layers(model, _swap_types(q_linear)).values()]


def _swap_types(q_linear: bool) -> dict:
    return {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear} if q_linear else {nn.Conv2d: QuantConv2d}


def _excluded(names, exclude) -> bool:
    return any(name == entry or name.startswith(entry + ".") for name in names for entry in exclude)


def parse_exclude(exclude) -> tuple:
    """`exclude` as a tuple of names; a string is split at commas (the command line's form)."""
    if isinstance(exclude, str):
        exclude = exclude.split(",")
    return tuple(entry.strip() for entry in exclude if entry.strip())


def _layers(model: nn.Module, types) -> dict:
    """{id: (layer, [every name it has in `model`])} for the layers of exactly `types`, but those
    only reachable through `model`'s training-only parts."""
    training_only = tuple(f"{name}." for name in training_only_parts(model))
    layers = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if type(module) in types and not name.startswith(training_only):
            layers.setdefault(id(module), (module, []))[1].append(name)
    return layers


def check_exclude(model: nn.Module, q_linear: bool, exclude) -> tuple:
    """`exclude` parsed; a UsageError names an entry that matches no quantizable layer."""
    exclude = parse_exclude(exclude)
    names = [name for _, layer_names in _layers(model, _swap_types(q_linear)).values() for name in layer_names]
    for entry in exclude:
        if not _excluded(names, [entry]):
            raise UsageError(
                f"q_exclude {entry!r} names no quantizable layer; valid: {', '.join(quantizable_names(model, q_linear))}"
            )
    return exclude


def quantize_model(model: nn.Module, bits: int, q_linear: bool = False, exclude=()) -> dict:
    """Swap `model`'s Conv2d (and Linear with `q_linear`) layers for quantized ones, in place.

    `exclude` names layers (or whole sub-modules, by prefix) to keep in float. Returns
    {name: quantized layer} in the order of `model.named_modules()`.
    """
    check_bits(bits)
    exclude = check_exclude(model, q_linear, exclude)
    types = _swap_types(q_linear)
    layers = _layers(model, types)
    replacements = {
        key: types[type(module)].from_float(module, bits)
        for key, (module, names) in layers.items()
        if not _excluded(names, exclude)
    }
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    return {layers[key][1][0]: module for key, module in replacements.items()}
