"""Every image of an environment decoded once into a uint8 array, for the gpu input pipeline.

Two caches per image environment, both made by the same PIL code as the classic path:

- `eval`: every image resized to (image_size, image_size) by torchvision's `Resize` on the PIL
  image, the exact bytes the classic evaluation transform turns into a tensor, so evaluation
  inputs are identical to the classic path's;
- `train`: every image at most `size` pixels on its longer side (PIL bilinear down-scale keeping
  the aspect ratio; smaller images, such as PACS's 227 px at 256, stay as decoded),
  stored in the top-left corner of a size x size slot with its (height, width) beside it, for
  the random resized crop to draw from (gpu_augment.py).

A cache that fits in a quarter of the machine's memory is built in memory, once per process
(the folds of a run share it). A larger one (DomainNet) is a memory-mapped file under
`cache_dir`, named by a digest of the dataset path, the file list and the cache resolution: it is
built once, with a progress bar, written under a temporary name and renamed when complete, and
reused by every later run. Decoding runs in DataLoader worker processes.
"""

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from tqdm import tqdm

from domainbed.data.loaders import DataLoader
from domainbed.errors import UsageError

MODES = ("train", "eval")
_CACHES = {}


@dataclass
class ImageCache:
    """Item i is `images[i, :, :h, :w]` with (h, w) = `sizes[i]`, labelled `labels[i]`."""

    images: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor
    path: Path | None = None

    def __len__(self):
        return len(self.labels)


def train_cache_size(image_size: int) -> int:
    """The longer side kept for training crops: 8/7 of the input size, and at least 256, so a crop
    of 70% of the area is still about as large as the input, and small inputs are cropped from
    (nearly) the decoded image and shrunk once, by roi_align's area sampling, rather than
    resampled twice, which blurs them: with an 8/7 cache, ResNet-18 on PACS at 32 px ended 3.4
    points lower in training-domain validation accuracy than the classic path (300 steps, two
    seeds); with 256 the gap is within seed noise."""
    return max(256, int(round(image_size * 8 / 7)))


def memory_limit_bytes() -> int:
    """A quarter of the machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (AttributeError, ValueError, OSError):
        return 4 << 30


def default_cache_dir() -> Path:
    return Path(os.environ.get("DOMAINBED_CACHE", Path.home() / ".cache" / "domainbed"))


class _Resized(Dataset):
    """(uint8 (3, size, size) slot, (h, w), label) per item of an environment of PIL images."""

    def __init__(self, environment, mode: str, size: int):
        self.environment = environment
        self.mode = mode
        self.size = size
        self.eval_resize = T.Resize((size, size))

    def __len__(self):
        return len(self.environment)

    def __getitem__(self, index):
        image, label = self.environment[index]
        if not isinstance(image, Image.Image):
            raise UsageError(f"the image cache needs PIL images, but item {index} is a {type(image).__name__}")
        image = image.convert("RGB")
        if self.mode == "eval":
            image = self.eval_resize(image)
        elif max(image.size) > self.size:
            width, height = image.size
            scale = self.size / max(width, height)
            image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        slot = np.zeros((3, self.size, self.size), dtype=np.uint8)
        slot[:, : array.shape[1], : array.shape[2]] = array
        return torch.from_numpy(slot), torch.tensor(array.shape[1:]), label


def cache_key(environment, mode: str, size: int) -> str | None:
    """A digest of the dataset path, the file list and the resolution; None for environments
    without a file list (they are cached in memory only)."""
    samples = getattr(environment, "samples", None)
    if samples is None:
        return None
    digest = hashlib.sha1(f"{mode}|{size}|{Path(getattr(environment, 'root', '')).resolve()}".encode())
    for path, label in samples:
        digest.update(f"\n{path}|{label}".encode())
    return digest.hexdigest()[:20]


def image_cache(environment, mode: str, size: int, cache_dir=None, num_workers: int = 0,
                in_memory: bool | None = None, name: str = "") -> ImageCache:
    """The cache of `environment` (a Dataset of (PIL image, label)) in `mode` at `size`.

    `in_memory` None decides by size (see the module docstring); `cache_dir` None is
    $DOMAINBED_CACHE or ~/.cache/domainbed."""
    if mode not in MODES:
        raise UsageError(f"unknown cache mode {mode!r}; valid: {', '.join(MODES)}")
    key = cache_key(environment, mode, size)
    nbytes = len(environment) * 3 * size * size
    if in_memory is None:
        in_memory = key is None or nbytes <= memory_limit_bytes()
    memo = (key or id(environment), mode, size, in_memory)
    if memo not in _CACHES:
        if in_memory:
            _CACHES[memo] = _build(environment, mode, size, num_workers, name, None)
        else:
            if key is None:
                raise UsageError(f"environment {name or environment!r} has no file list to key an on-disk cache")
            _CACHES[memo] = _on_disk(environment, mode, size, num_workers, name,
                                     Path(cache_dir) if cache_dir else default_cache_dir(), key)
    return _CACHES[memo]


def _on_disk(environment, mode, size, num_workers, name, cache_dir: Path, key: str) -> ImageCache:
    stem = cache_dir / f"{name or 'env'}-{mode}{size}-{key}"
    images_path, index_path = stem.with_suffix(".u8"), stem.with_suffix(".npz")
    shape = (len(environment), 3, size, size)
    if not (images_path.is_file() and index_path.is_file()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{images_path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            storage = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
            built = _build(environment, mode, size, num_workers, name, torch.from_numpy(storage))
            storage.flush()
            del storage
            os.replace(tmp, images_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{index_path.name}.", suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, sizes=built.sizes.numpy(), labels=built.labels.numpy(), shape=np.array(shape))
        os.replace(tmp, index_path)
    index = np.load(index_path)
    if tuple(index["shape"]) != shape:
        raise UsageError(f"image cache {images_path} has shape {tuple(index['shape'])}, expected {shape}; delete it")
    # copy-on-write: torch wants a writable array, and the file must never change
    images = torch.from_numpy(np.memmap(images_path, dtype=np.uint8, mode="c", shape=shape))
    return ImageCache(images, torch.from_numpy(index["sizes"]), torch.from_numpy(index["labels"]), images_path)


def _build(environment, mode, size, num_workers, name, storage: torch.Tensor | None) -> ImageCache:
    n = len(environment)
    images = storage if storage is not None else torch.empty((n, 3, size, size), dtype=torch.uint8)
    sizes = torch.empty((n, 2), dtype=torch.int64)
    labels = torch.empty(n, dtype=torch.int64)
    loader = DataLoader(_Resized(environment, mode, size), batch_size=64, num_workers=num_workers)
    start = 0
    with tqdm(total=n, desc=f"caching {name or 'images'} ({mode}, {size} px)", unit="img", disable=None,
              leave=False) as bar:
        for slots, hw, y in loader:
            end = start + len(y)
            images[start:end] = slots
            sizes[start:end] = hw
            labels[start:end] = y
            start = end
            bar.update(len(y))
    return ImageCache(images, sizes, labels, None)
