"""Every file of tensors we write and read back: checkpoints, saved models, compact exports.

- Nothing we load runs code: files are read with `torch.load(..., weights_only=True)`, which
  accepts tensors and plain python data only, so a crafted pickle (a file whose unpickling would
  call a function) is refused with a one-line error before anything in it runs. Whatever a file
  needs is therefore stored as tensors and plain types (numpy's RNG state as a tensor, say).
- Integrity: a file holds `{"sha256": digest, "content": obj}`, the digest taken over the whole
  content (every tensor's dtype, shape and bytes, every other value's repr, in order). Loading
  recomputes it, so a flipped bit or a truncated write is a one-line error naming the file, and
  resume can fall back to an older checkpoint (domainbed/runs/checkpoint.py).
- Durable: written through `misc.atomic_open` (temporary file, fsync, rename).
"""

import hashlib
import pickle
import warnings
from pathlib import Path

import torch

from domainbed import misc
from domainbed.errors import UsageError, first_line


class DamagedFile(UsageError):
    """A file that exists but cannot be trusted: unreadable, unchecked or failing its checksum."""


def _feed(hasher, obj) -> None:
    if torch.is_tensor(obj):
        tensor = obj.detach().cpu().contiguous()
        hasher.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        hasher.update(f"dict {len(obj)};".encode())
        for key, value in obj.items():
            hasher.update(repr(key).encode())
            _feed(hasher, value)
    elif isinstance(obj, (list, tuple)):
        hasher.update(f"{type(obj).__name__} {len(obj)};".encode())
        for value in obj:
            _feed(hasher, value)
    else:
        hasher.update(f"{repr(obj)};".encode())


def digest(obj) -> str:
    """sha256 over the content of `obj` (nested dicts, lists and tuples of tensors and plain values)."""
    hasher = hashlib.sha256()
    _feed(hasher, obj)
    return hasher.hexdigest()


def save(obj, path) -> None:
    """Write `obj` with its checksum to `path`, atomically and durably."""
    with misc.atomic_open(path) as handle:
        torch.save({"sha256": digest(obj), "content": obj}, handle)


# torch's refusals open with advice to load the file unsafely; the line that names what was
# refused is further down
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _refusal_reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)]
    return specific[0] if specific else type(error).__name__


def load_plain(path, what: str = "file"):
    """The tensors and plain data in `path`, a file that anyone's `torch.save` wrote (pretrained
    weights, say): loaded with `weights_only=True`, so a file that would run code is refused with
    one line (torch's own warnings about the file are not printed: the refusal says it all)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DamagedFile(f"refused {what} {path}: it holds more than tensors and plain data, and loading it "
                          f"could run code ({_refusal_reason(error)})") from None
    except Exception as error:
        raise DamagedFile(f"cannot read {what} {path}: {first_line(error)}") from None


def load(path, what: str = "file"):
    """The content that `save` wrote to `path`, verified; one-line UsageError otherwise."""
    saved = load_plain(path, what)
    path = Path(path)
    if not isinstance(saved, dict) or set(saved) != {"sha256", "content"}:
        raise DamagedFile(f"{what} {path} carries no checksum: it was not written by this version of the "
                          "harness (or not by the harness)")
    if digest(saved["content"]) != saved["sha256"]:
        raise DamagedFile(f"{what} {path} fails its checksum: the file is damaged")
    return saved["content"]
