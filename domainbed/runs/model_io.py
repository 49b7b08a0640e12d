"""Saving and loading a fold's final model so that it can be evaluated again or ensembled.

A final-model file holds what is needed to rebuild the algorithm without the run's command
line: its name, input shape, class and domain counts, hparams, the dataset and test
environments, and the state dict. Features that change the module tree (quantization swaps
Conv2d for QuantConv2d, say) record themselves under `meta["transforms"]` and register a
rebuild function with `@register_rebuild(key)`, applied to the fresh algorithm before the
state dict is loaded. The state dict leaves out the algorithm's training-only parts
(`Algorithm.TRAINING_ONLY`, which `predict` never uses: MIRO's frozen pretrained featurizer); a
rebuilt algorithm keeps the ones it was built with.
"""

import torch

from domainbed.runs import layout, persistence
from domainbed.algorithms import get_algorithm_class
from domainbed.training_only import load_prediction_state, prediction_state_dict
from domainbed.errors import UsageError
from domainbed.training.extensions import import_extension_modules

REBUILDERS = {}


def register_rebuild(key: str):
    def decorator(function):
        REBUILDERS[key] = function
        return function

    return decorator


# where the trainer saves a fold's final model
final_model_path = layout.final_model_path


def model_meta(algorithm: str, dataset, num_domains: int, hparams: dict, test_envs, transforms=None,
               initial_weights: str | None = None) -> dict:
    """What `load_model` needs to rebuild a fold's algorithm, and the fingerprint of the weights its
    training started from (domainbed/training/initialization.py), which weight averages across
    runs compare."""
    return {
        "algorithm": algorithm, "input_shape": tuple(dataset.input_shape),
        "num_classes": dataset.num_classes, "num_domains": num_domains, "hparams": hparams,
        "dataset": getattr(dataset, "NAME", type(dataset).__name__),
        "environments": list(dataset.environments), "test_envs": list(test_envs),
        "transforms": dict(transforms or {}), "initial_weights": initial_weights,
    }


def save_model(path, model, meta: dict) -> None:
    """`model` is the algorithm (or an averaged copy of it) to save; `meta` must name
    algorithm, input_shape, num_classes, num_domains, hparams, dataset, environments, test_envs."""
    state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in prediction_state_dict(model).items()}
    persistence.save({"meta": meta, "model_dict": state}, path)


def apply_transforms(algorithm, transforms: dict, source, applied=()) -> None:
    """Replay the module-tree changes `transforms` (quantization's swap, say) on a fresh
    `algorithm`, but those already `applied`; `source` names the file in errors."""
    import_extension_modules()
    for key, transform in transforms.items():
        if key in applied:
            continue
        if key not in REBUILDERS:
            raise UsageError(f"{source} needs the {key!r} rebuild, which is not registered")
        REBUILDERS[key](algorithm, transform)


def rebuild(meta: dict, state: dict, source):
    """The algorithm that `meta` describes, with `state` loaded strictly (but its training-only
    parts, which keep their values when `state` lacks them), in eval mode on the CPU. The one
    place a saved model is rebuilt: final models, kept checkpoints, compact exports."""
    if not state:
        raise UsageError(f"{source} holds no weights")
    algorithm = get_algorithm_class(meta["algorithm"])(
        meta["input_shape"], meta["num_classes"], meta["num_domains"], meta["hparams"]
    )
    apply_transforms(algorithm, meta.get("transforms", {}), source)
    try:
        load_prediction_state(algorithm, state)
    except RuntimeError as error:
        raise UsageError(f"{source} does not fit its {meta['algorithm']} model: "
                         f"{str(error).splitlines()[0]}") from None
    return algorithm.eval()


def load_model(path, device="cpu"):
    """(algorithm in eval mode, meta) from a file written by `save_model` (or a checkpoint)."""
    saved = persistence.load(path, "model file")
    if not isinstance(saved, dict) or "meta" not in saved or "model_dict" not in saved:
        raise UsageError(f"model file {path} has no model (meta and model_dict)")
    return rebuild(saved["meta"], saved["model_dict"], f"model file {path}").to(device), saved["meta"]


def read_meta(path) -> dict:
    """The metadata of a saved model, verified."""
    saved = persistence.load(path, "model file")
    if not isinstance(saved, dict) or "meta" not in saved:
        raise UsageError(f"model file {path} has no metadata")
    return saved["meta"]


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def check_members(runs, metas) -> None:
    """One-line errors when the models of `runs` (their metadata `metas`) are not of one task: the
    same dataset, domains, class count and input shape, as ensembles and weight averages need."""
    first, reference = runs[0], metas[0]
    for run, meta in zip(runs[1:], metas[1:]):
        for key, what in (("dataset", "dataset"), ("environments", "domains"), ("num_classes", "class count"),
                          ("input_shape", "input shape")):
            if _plain(meta[key]) != _plain(reference[key]):
                raise UsageError(f"runs disagree on the {what}: {first.name} has {reference[key]}, "
                                 f"{run.name} has {meta[key]}")
