"""The compact checkpoint of a quantized model: integer codes at `bits` bits plus step sizes.

A quantized layer's latent float weight is replaced by its integer codes, packed `bits` bits
per weight with numpy's packbits, so the file really is about bits/32 of the float file for
those layers; step sizes, biases, normalisation layers and every other tensor stay as they are.
Loading sets each latent weight to code * step, which the layer's fake quantizer maps back to
exactly the same code, so the reloaded model predicts exactly what the trained one did.

The file holds the same `meta` as domainbed.runs.model_io's final models (algorithm, shapes, hparams,
dataset, transforms), so `load_compact` rebuilds the algorithm without the run's command line.
"""


import numpy as np
import torch

from domainbed.training_only import prediction_state_dict, training_only_parts
from domainbed.runs import persistence
from domainbed.errors import UsageError
from domainbed.quant.lsq import code_range
from domainbed.quant.modules import QUANTIZED_TYPES

FORMAT = "domainbed-lsq-compact-1"


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes in [-Qn, Qp] as a uint8 tensor of ceil(numel * bits / 8) bytes."""
    q_n, _ = code_range(bits)
    unsigned = (codes.flatten().cpu().numpy().astype(np.int64) + q_n).astype(np.uint16)
    bit_planes = (unsigned[:, None] >> np.arange(bits, dtype=np.uint16)) & 1
    return torch.from_numpy(np.packbits(bit_planes.astype(np.uint8).ravel()))


def unpack_codes(packed: torch.Tensor, bits: int, shape) -> torch.Tensor:
    """The inverse of `pack_codes`: int32 codes of `shape`."""
    q_n, _ = code_range(bits)
    numel = int(np.prod(shape, dtype=np.int64))
    bit_planes = np.unpackbits(packed.numpy(), count=numel * bits).reshape(numel, bits)
    unsigned = bit_planes.astype(np.int32) @ (1 << np.arange(bits, dtype=np.int32))
    return torch.from_numpy(unsigned - q_n).reshape(tuple(shape))


def model_size_mb(model: torch.nn.Module) -> tuple[float, float]:
    """(size, float size) in MB (2^20 bytes): every floating-point parameter and buffer counted
    once, quantized layers' weights at their bits and the rest (step sizes included) at 32 bits;
    the float size counts the same tensors at 32 bits, without the step sizes. An algorithm's
    training-only parts (MIRO's frozen pretrained featurizer) are no part of the model and not
    counted."""
    left_out = {id(t) for part in training_only_parts(model).values() for t in [*part.parameters(), *part.buffers()]}
    bits_of, steps = {}, set()
    for module in model.modules():
        if isinstance(module, QUANTIZED_TYPES):
            bits_of[id(module.weight)] = module.bits
            steps.add(id(module.step_size))
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]
               if t.is_floating_point() and id(t) not in left_out}
    size = sum(t.numel() * bits_of.get(key, 32) for key, t in tensors.items())
    float_size = sum(t.numel() * 32 for key, t in tensors.items() if key not in steps)
    return size / 8 / 2**20, float_size / 8 / 2**20


def compact_state(model: torch.nn.Module) -> dict:
    """The model's state (its training-only parts left out, as in model_io's final models) with
    every quantized weight as packed codes; tensors shared by several state-dict keys are stored once."""
    quantized = {}
    for module in model.modules():
        if isinstance(module, QUANTIZED_TYPES):
            quantized[id(module.weight)] = module
    state = prediction_state_dict(model, keep_vars=True)
    canonical = {}
    for key, value in state.items():
        canonical.setdefault(id(value), key)
    tensors, codes, aliases = {}, {}, {}
    for key, value in state.items():
        if canonical[id(value)] != key:
            aliases[key] = canonical[id(value)]
        elif id(value) in quantized:
            module = quantized[id(value)]
            codes[key] = {"packed": pack_codes(module.integer_codes(), module.bits), "bits": module.bits,
                          "shape": tuple(value.shape), "dtype": str(value.dtype),
                          "step": canonical[id(module.step_size)]}
        else:
            tensors[key] = value.detach().cpu().clone()
    return {"format": FORMAT, "tensors": tensors, "codes": codes, "aliases": aliases}


def expand_state(compact: dict) -> dict:
    """A plain state dict from `compact_state`'s output: latent weights are code * step."""
    if compact.get("format") != FORMAT:
        raise UsageError(f"not a compact quantized checkpoint (format {compact.get('format')!r}, expected {FORMAT!r})")
    state = dict(compact["tensors"])
    for key, entry in compact["codes"].items():
        step = state[entry["step"]]
        values = unpack_codes(entry["packed"], entry["bits"], entry["shape"]).to(step.dtype) * step
        state[key] = values.to(getattr(torch, entry["dtype"].removeprefix("torch.")))
    for key, target in compact["aliases"].items():
        state[key] = state[target]
    return state


def save_compact(path, model: torch.nn.Module, meta: dict) -> None:
    """Write `model` (an algorithm with quantized layers) and the `meta` of model_io.save_model."""
    persistence.save({"meta": meta, "compact": compact_state(model)}, path)


def load_compact(path, device="cpu"):
    """(algorithm in eval mode, meta) from a file written by `save_compact`."""
    from domainbed.runs import model_io

    saved = persistence.load(path, "compact model file")
    if not isinstance(saved, dict) or "meta" not in saved or "compact" not in saved:
        raise UsageError(f"compact model file {path} has no model (meta and compact)")
    state = expand_state(saved["compact"])
    return model_io.rebuild(saved["meta"], state, f"compact model file {path}").to(device), saved["meta"]
