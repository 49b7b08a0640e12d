"""Saving and loading a fold's final model so that it can be evaluated again or ensembled.

A final-model file holds what is needed to rebuild the algorithm without the run's command
line: its name, input shape, class and domain counts, hparams, the dataset and test
environments, and the state dict. Features that change the module tree (quantization swaps
Conv2d for QuantConv2d, say) record themselves under `meta["transforms"]` and register a
rebuild function with `@register_rebuild(key)`, applied to the fresh algorithm before the
state dict is loaded.
"""

from pathlib import Path

import torch

from domainbed import misc
from domainbed.algorithms import get_algorithm_class
from domainbed.errors import UsageError
from domainbed.extensions import import_extension_modules

REBUILDERS = {}


def register_rebuild(key: str):
    def decorator(function):
        REBUILDERS[key] = function
        return function

    return decorator


def final_model_path(out_dir, test_envs) -> Path:
    return Path(out_dir) / "models" / f"TE{','.join(map(str, test_envs))}_final.pth"


def model_meta(algorithm: str, dataset, num_domains: int, hparams: dict, test_envs, transforms=None) -> dict:
    """What `load_model` needs to rebuild a fold's algorithm."""
    return {
        "algorithm": algorithm, "input_shape": tuple(dataset.input_shape),
        "num_classes": dataset.num_classes, "num_domains": num_domains, "hparams": hparams,
        "dataset": getattr(dataset, "NAME", type(dataset).__name__),
        "environments": list(dataset.environments), "test_envs": list(test_envs),
        "transforms": dict(transforms or {}),
    }


def save_model(path, model, meta: dict) -> None:
    """`model` is the algorithm (or an averaged copy of it) to save; `meta` must name
    algorithm, input_shape, num_classes, num_domains, hparams, dataset, environments, test_envs."""
    state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
    misc.atomic_torch_save({"meta": meta, "model_dict": state}, path)


def load_model(path, device="cpu"):
    """(algorithm in eval mode, meta) from a file written by `save_model`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        meta = saved["meta"]
    except Exception as error:
        raise UsageError(f"cannot read model file {path}: {error}") from None
    algorithm = get_algorithm_class(meta["algorithm"])(
        meta["input_shape"], meta["num_classes"], meta["num_domains"], meta["hparams"]
    )
    import_extension_modules()
    for key, transform in meta.get("transforms", {}).items():
        if key not in REBUILDERS:
            raise UsageError(f"model file {path} needs the {key!r} rebuild, which is not registered")
        REBUILDERS[key](algorithm, transform)
    algorithm.load_state_dict(saved["model_dict"], strict=False)
    return algorithm.to(device).eval(), meta
