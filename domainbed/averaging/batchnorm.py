"""BatchNorm statistics of an averaged model.

Averaging weights leaves the BatchNorm running statistics of one of the averaged models, which do
not match the averaged weights. SWAD re-estimates them on training minibatches before evaluating
the average; that is only right (and only needed) when the network's BatchNorm layers update their
statistics during training. A frozen BatchNorm (a pretrained ResNet with `freeze_bn`) keeps the
pretrained statistics in every model of the average, so they are already the average's.
"""

import itertools

import torch
import torch.nn as nn


def updates_batchnorm_statistics(model: nn.Module) -> bool:
    """Whether any BatchNorm layer of `model` updates its running statistics in training mode.
    Asks the network itself (its `train()` decides which layers stay in eval mode) and leaves
    every module's mode as it was."""
    modes = {module: module.training for module in model.modules()}
    model.train()
    try:
        return any(isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
                   and module.track_running_stats for module in model.modules())
    finally:
        for module, mode in modes.items():
            module.training = mode


def batchnorm_note(model: nn.Module, n_steps: int) -> str:
    """What happens to the BatchNorm statistics of an average of `model`, for the table's rules:
    re-estimated on `n_steps` minibatches, frozen, or nothing to do (ViTs, ConvNeXt: LayerNorm)."""
    if not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        return "the network has no BatchNorm layer, no statistics to re-estimate"
    if not updates_batchnorm_statistics(model):
        return "BatchNorm statistics frozen in training (freeze_bn), none re-estimated"
    if n_steps:
        return f"BatchNorm statistics re-estimated on {n_steps} training minibatches"
    return "BatchNorm statistics not re-estimated (swad_bn_steps 0)"


@torch.no_grad()
def update_bn(model: nn.Module, minibatches, n_steps: int) -> None:
    """Re-estimate BatchNorm statistics of `model` on `n_steps` training minibatches (each a
    sequence of (x, y), one per training domain, concatenated as in training), as SWAD does
    before evaluating an average whose BatchNorm layers are not frozen."""
    inputs = (torch.cat([x for x, _ in batches]) for batches in itertools.islice(minibatches, n_steps))
    torch.optim.swa_utils.update_bn(inputs, model)

