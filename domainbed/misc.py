"""Small shared helpers: hashing seeds, seeding every RNG, atomic writes."""

import contextlib
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def seed_hash(*args) -> int:
    """A deterministic 31-bit integer from any printable arguments, as DomainBed's."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


def fold_seed(seed: int, trial_seed: int, test_envs) -> int:
    """The seed of one leave-one-domain-out fold: a function of (seed, trial_seed, test_envs)
    only, so a fold's result does not depend on which folds ran before it."""
    return seed_hash(seed, trial_seed, tuple(test_envs))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_deterministic(deterministic: bool) -> None:
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@contextlib.contextmanager
def atomic_open(path):
    """A binary handle whose content replaces `path` only when the block completes: written to a
    temporary file beside it, fsynced, renamed, and the directory entry fsynced, so a reader (or a
    crash at any moment) sees the old file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(value):
    if isinstance(value, (Path, range)):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(obj, **kwargs) -> str:
    return json.dumps(obj, default=json_default, **kwargs)
