"""Loading ImageNet weights for torchvision backbones, offline-friendly.

Weights come from `hparams["pretrained_path"]` when it names a file, else from torchvision's
own cache (`$TORCH_HOME/hub/checkpoints`), downloading there when the network allows. When
neither works the user gets one line saying where we looked and what to do instead.
"""

import os
from pathlib import Path

import torch

from domainbed.errors import UsageError
from domainbed.runs import persistence


def torchvision_cache_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_pretrained_state(weights, name: str, hparams: dict) -> dict:
    """The state dict of `weights` (a torchvision Weights enum member) for backbone `name`."""
    path = hparams.get("pretrained_path") or ""
    if path:
        if not os.path.isfile(path):
            raise UsageError(f"pretrained_path {path!r} is not a file; give the .pth of {name}'s ImageNet "
                             "weights, or pass --pretrained False to train from scratch")
        return persistence.load_plain(path, f"pretrained_path of {name}")
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # no network, a proxy, a truncated cache file: all end the same way
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"cannot load ImageNet weights for {name} ({reason}); looked for "
            f"{torchvision_cache_path(weights)}: put {os.path.basename(weights.url)} there, or pass "
            "--pretrained_path FILE, or --pretrained False to train from scratch"
        ) from None
