"""Where a backbone's pretrained weights come from, offline-friendly.

- `hparams["pretrained_path"]`, when set, names a local file that is read instead of any cache:
  `.safetensors` through safetensors, anything else (`.pth`, `.pth.tar`, `.bin`) with
  `torch.load(weights_only=True)`, so nothing in it runs code.
- Otherwise torchvision-style weights (a URL) come from torch's cache,
  `$TORCH_HOME/hub/checkpoints`, and timm's from the Hugging Face cache (`$HF_HOME/hub`); either
  is downloaded there when the network allows (`HF_HUB_OFFLINE=1` makes the hub fail at once).

When none of these works the user gets one line naming the file that is needed, where it is looked
for and what to do instead (`--pretrained_path FILE` or `--pretrained False`).
"""

import contextlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from domainbed.errors import UsageError, first_line
from domainbed.runs import persistence

INSTEAD = "or pass --pretrained False to train from scratch"


def torchvision_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def pretrained_path(hparams: dict, name: str, expected: str) -> str:
    """`hparams["pretrained_path"]` ("" when unset); a path that is no file is a one-line error
    saying what `name` expects there."""
    path = hparams.get("pretrained_path") or ""
    if path and not os.path.isfile(path):
        raise UsageError(f"pretrained_path {path!r} is not a file; give {expected} for {name}, {INSTEAD}")
    return path


def read_weights_file(path, what: str) -> dict:
    """The tensors of a local weights file, read without running anything in it."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # a truncated or foreign file: safetensors' own message, one line
            raise UsageError(f"cannot read {what} {path}: {first_line(error)}") from None
    state = persistence.load_plain(path, what)
    if not isinstance(state, dict):
        raise UsageError(f"{what} {path} holds {type(state).__name__}, not a state dict of tensors")
    return state


def load_url_state(url: str, name: str, hparams: dict, description: str = "ImageNet weights") -> dict:
    """The state dict at `url` (torch's cache, downloaded when the network allows), or the file of
    `hparams["pretrained_path"]`, for backbone `name`."""
    filename = os.path.basename(url)
    path = pretrained_path(hparams, name, f"the file of {description} ({filename})")
    if path:
        return read_weights_file(path, f"pretrained_path of {name}")
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu", weights_only=True)
    except Exception as error:  # no network, a proxy, a truncated cache file: all end the same way
        raise UsageError(
            f"cannot load {description} for {name} ({first_line(error)}); looked for "
            f"{torchvision_cache_path(url)}: put {filename} ({url}) there, or pass --pretrained_path FILE, {INSTEAD}"
        ) from None


def load_pretrained_state(weights, name: str, hparams: dict) -> dict:
    """The state dict of `weights` (a torchvision Weights enum member) for backbone `name`."""
    return load_url_state(weights.url, name, hparams)


def import_timm(name: str):
    try:
        import timm
    except ImportError:
        raise UsageError(f"backbone {name} needs timm: pip install timm") from None
    return timm


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_cached_file(repo: str) -> str | None:
    """The weights of the hub's `repo` in the Hugging Face cache, without asking the network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename, cache_dir=_hub_cache())
        if isinstance(path, str):
            return path
    return None


def unwrap_state(state: dict) -> dict:
    """The model's tensors in a training checkpoint (`{"model": ...}`, `{"state_dict": ...}`, the
    keys of DataParallel's `module.`), as timm reads its own files."""
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _timm_needs(timm_model: str, cfg, repo: str | None) -> str:
    """Where the weights of `timm_model` can come from, for a one-line error."""
    if repo:
        return (f"model.safetensors of {repo} (https://huggingface.co/{repo}), in the Hugging Face cache "
                f"{_hub_cache()} (`hf download {repo}` where the network allows) or as --pretrained_path FILE")
    if cfg is not None and cfg.url:
        return f"{os.path.basename(cfg.url)} ({cfg.url}) as --pretrained_path FILE"
    return f"a file of timm's {timm_model} weights as --pretrained_path FILE"


@contextlib.contextmanager
def _quiet_hub():
    """The hub's warnings about each failed request stay unprinted: our one line says it all."""
    from huggingface_hub.utils import logging as hub_logging

    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(verbosity)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def timm_pretrained_model(timm_model: str, name: str, hparams: dict, description: str, **kwargs) -> nn.Module:
    """timm's `timm_model` (a name with its pretrained tag) with its pretrained weights, head
    included, for backbone `name`; `kwargs` go to `timm.create_model` (in_chans).

    With the pretrained head in place timm loads strictly, so a file of another model is an error,
    not a silently random initialisation; timm's own conversion runs on the loaded tensors (OpenAI
    CLIP's and DINOv2's layouts, DeiT's `{"model": ...}`). Offline (`HF_HUB_OFFLINE=1`) a file
    missing from the cache is an error before the model is built."""
    timm = import_timm(name)
    cfg = timm.models.get_pretrained_cfg(timm_model)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    path = pretrained_path(hparams, name, f"timm's {timm_model} weights (.safetensors or .pth)")
    if path:
        state = unwrap_state(read_weights_file(path, f"pretrained_path of {name}"))
        overlay, where = {"state_dict": state}, f"from {path}"
    else:
        cached = _hub_cached_file(repo) if repo else None
        overlay, where = ({"file": cached}, f"from {cached}") if cached else ({}, "")
        if not cached and repo and _hub_offline():
            raise UsageError(f"cannot load {description} for {name} (HF_HUB_OFFLINE is set and it is not cached); it "
                             f"needs {_timm_needs(timm_model, cfg, repo)}, {INSTEAD}")
    try:
        with _quiet_hub():
            return timm.create_model(timm_model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as error:  # no network, a wrong file, a truncated cache: all end the same way
        reason = first_line(error, with_type=True)
        if where:
            raise UsageError(f"cannot load {description} for {name} {where} ({reason}); pass --pretrained_path FILE "
                             f"with timm's {timm_model} weights, {INSTEAD}") from None
        raise UsageError(f"cannot load {description} for {name} ({reason}); it needs "
                         f"{_timm_needs(timm_model, cfg, repo)}, {INSTEAD}") from None
