"""The device-resident input pipeline (`--pipeline gpu`), and the choice between pipelines.

`classic` is the reference: PIL transforms in DataLoader workers (loaders.py). `gpu` serves the
same items from uint8 caches (cache.py) and augments them on the device (gpu_augment.py):

- training: the items of domain d at step t are `keys_d[batch_indices(seed_d, t, n_d, B)]`, the
  same function of (stream seed, step) as the classic sampler with the same stream seeds, so both
  pipelines visit the same items in the same order. The augmentation parameters of step t come
  from a generator seeded by (stream seeds, t), so a resumed run also sees the same
  augmentations. All domains are augmented in one batched call and split again.
- evaluation: the splits are read from caches already resized to the input size; a batch is a
  gather, a division by 255 and the normalisation: a pure forward pass over device memory.

Caches are held on the device when the whole dataset's caches fit in a quarter of its memory
(PACS, VLCS, OfficeHome, TerraIncognita on a 40 GB+ GPU); otherwise batches are gathered on the
host (from memory or the memory-mapped file) one step ahead in a thread, into pinned memory, and
copied with `non_blocking`. In-memory (tensor) datasets such as Synthetic and the MNIST sets have
no transforms: their tensors are moved to the device once and gathered there. On the CPU every
step runs on CPU tensors, in the same code.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from domainbed import misc
from domainbed.data.cache import image_cache, train_cache_size
from domainbed.data.gpu_augment import DeviceConstant, TrainAugment, normalize
from domainbed.data.loaders import num_workers_for
from domainbed.data.pipeline import ClassicPipeline, InputPipeline
from domainbed.data.sampling import batch_indices
from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import choice
from domainbed.datasets.splits import SplitDataset
from domainbed.errors import UsageError, unknown_choice
from domainbed.networks import input_normalization

PIPELINES = ("auto", "classic", "gpu")
DEVICE_FRACTION = 0.25
_ON_DEVICE = {}


def resolve_pipeline(name: str, device: torch.device) -> str:
    """`auto` is `gpu` on CUDA and `classic` elsewhere."""
    if name not in PIPELINES:
        raise unknown_choice("pipeline", name, PIPELINES)
    if name == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "classic"
    return name


def build_pipeline(hparams: dict, dataset, device: torch.device, eval_seed: int = 0) -> InputPipeline:
    """The input pipeline `hparams["pipeline"]` names; `eval_seed` seeds the classic evaluation
    loader's workers (the gpu pipeline's evaluation draws nothing)."""
    if resolve_pipeline(hparams["pipeline"], device) == "classic":
        return ClassicPipeline(dataset, hparams, device, eval_seed)
    return GpuPipeline(dataset, hparams, device)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device through pinned memory without blocking; CPU tensors stay as they are."""
    if device.type == "cpu" or tensor.device == device:
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class _Source:
    """One environment as the pipeline reads it: uint8 images with their sizes (image data) or
    ready inputs (tensor data), and labels; `resident` when the inputs already live on the device."""

    def __init__(self, inputs, labels, sizes, device, resident):
        self.inputs = inputs
        self.labels = labels
        self.sizes = sizes
        self.resident = resident
        self.device = device

    def gather(self, items: torch.Tensor):
        """(inputs, labels) of `items` on the device; host gathers go through pinned memory."""
        if self.resident:
            items = items.to(self.inputs.device, non_blocking=True)
            return self.inputs.index_select(0, items), self.labels.index_select(0, items)
        return (_to_device(self.inputs.index_select(0, items), self.device),
                _to_device(self.labels.index_select(0, items), self.device))


class GpuPipeline(InputPipeline):
    name = "gpu"

    def __init__(self, dataset, hparams: dict, device):
        self.dataset = dataset
        self.device = torch.device(device)
        self.images = dataset.eval_transform is not None
        self.augment = bool(hparams["data_augmentation"])
        self.image_size = int(dataset.input_shape[-1])
        self.train_size = train_cache_size(self.image_size)
        self.channels_last = self.device.type == "cuda"
        mean, std = input_normalization(hparams)
        self.mean, self.std = list(mean), list(std)
        self._mean, self._std = DeviceConstant(self.mean), DeviceConstant(self.std)
        self.augmentation = TrainAugment(self.image_size, mean=mean, std=std)
        self.cache_dir = hparams["cache_dir"] or None
        self.workers = num_workers_for(hparams["num_workers"], os.cpu_count() or 1, 1)
        self.resident = self.device.type == "cpu" or not self.images or self._fits_on_device()
        self._sources = {}

    def _fits_on_device(self) -> bool:
        n_items = sum(len(environment) for environment in self.dataset)
        needed = n_items * 3 * (self.image_size ** 2 + (self.train_size ** 2 if self.augment else 0))
        return needed <= DEVICE_FRACTION * torch.cuda.get_device_properties(self.device).total_memory

    def source(self, environment, mode: str) -> _Source:
        """The `train` or `eval` source of one environment (built once per fold and mode; the
        caches themselves are shared across folds)."""
        if not self.images:
            mode = "tensor"
        elif mode == "train" and not self.augment:
            mode = "eval"
        key = (id(environment), mode)
        if key not in self._sources:
            self._sources[key] = self._make_source(environment, mode)
        return self._sources[key]

    def _make_source(self, environment, mode) -> _Source:
        if mode == "tensor":
            inputs, labels = _tensors(environment)
            return _Source(_resident(inputs, self.device), _resident(labels, self.device), None, self.device, True)
        name = self.dataset.environments[self.dataset.datasets.index(environment)]
        size = self.train_size if mode == "train" else self.image_size
        cache = image_cache(environment, mode, size, self.cache_dir, self.workers, name=f"{_name(self.dataset)}-{name}")
        if self.resident:
            return _Source(_resident(cache.images, self.device), _resident(cache.labels, self.device), cache.sizes,
                           self.device, True)
        return _Source(cache.images, cache.labels, cache.sizes, self.device, False)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images.float().div_(255.0), self._mean, self._std)

    def train_minibatches(self, splits, seeds, batch_size: int, start_step: int = 0):
        """Endless iterator of tuples of (x, y), one per training split, from `start_step` on."""
        splits = [_check_split(split) for split in splits]
        streams = [(self.source(split.underlying, "train"), torch.as_tensor(split.keys), seed)
                   for split, seed in zip(splits, seeds)]
        augment_seed = tuple(seeds)

        def host_part(step):
            items = [keys[batch_indices(seed, step, len(keys), batch_size)] for _, keys, seed in streams]
            return items, [source.gather(item) for (source, _, _), item in zip(streams, items)]

        def device_part(step, items, gathered):
            if not (self.images and self.augment):
                inputs = [x if not self.images else self._normalise(x) for x, _ in gathered]
                return tuple((self._finish(x), y) for x, (_, y) in zip(inputs, gathered))
            sizes = torch.cat([source.sizes.index_select(0, item) for (source, _, _), item in zip(streams, items)])
            generator = torch.Generator().manual_seed(misc.seed_hash(augment_seed, step, "augment"))
            x = self.augmentation.apply(torch.cat([x for x, _ in gathered]), self.augmentation.draw(sizes, generator))
            x = self._finish(x).split([len(item) for item in items])
            return tuple((x_d, y) for x_d, (_, y) in zip(x, gathered))

        step = start_step
        if self.resident:
            while True:
                yield device_part(step, *host_part(step))
                step += 1
        # host-resident caches: gather step t + 1 while step t trains, in a thread whose current
        # device is the run's (pinning and copying there would otherwise open a context on GPU 0)
        on_device = {}
        if self.device.type == "cuda":
            index = torch.cuda.current_device() if self.device.index is None else self.device.index
            on_device = {"initializer": torch.cuda.set_device, "initargs": (index,)}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gather", **on_device) as pool:
            pending = pool.submit(host_part, step)
            while True:
                items, gathered = pending.result()
                pending = pool.submit(host_part, step + 1)
                yield device_part(step, items, gathered)
                step += 1

    def eval_batches(self, datasets, batch_size: int):
        """The evaluator's input: (x, y) batches over `datasets` (evaluation splits) in order,
        each batch within one split."""
        return _EvalBatches(self, [_check_split(split) for split in datasets], batch_size)


class _EvalBatches:
    """Re-iterable: every evaluation walks the splits again."""

    def __init__(self, pipeline: GpuPipeline, splits, batch_size: int):
        self.pipeline = pipeline
        self.parts = [(pipeline.source(split.underlying, "eval"), torch.as_tensor(split.keys)) for split in splits]
        self.batch_size = batch_size

    def __iter__(self):
        pipeline = self.pipeline
        for source, keys in self.parts:
            for items in keys.split(self.batch_size):
                x, y = source.gather(items)
                yield pipeline._finish(pipeline._normalise(x) if pipeline.images else x), y

    def __len__(self):
        return sum(-(-len(keys) // self.batch_size) for _, keys in self.parts)


def _check_split(split):
    if not isinstance(split, SplitDataset):
        raise UsageError(f"the gpu pipeline reads SplitDataset splits of an environment, not {type(split).__name__}")
    return split


def _name(dataset) -> str:
    return getattr(dataset, "NAME", type(dataset).__name__)


def _tensors(environment):
    """(inputs, labels) of an in-memory environment."""
    if hasattr(environment, "tensors"):
        inputs, labels = environment.tensors[:2]
        return inputs, torch.as_tensor(labels, dtype=torch.long)
    items = [environment[i] for i in range(len(environment))]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.tensor([int(y) for _, y in items])


def _resident(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`, copied once per process (folds share the copy)."""
    if device.type == "cpu":
        return tensor
    key = (id(tensor), str(device))
    if key not in _ON_DEVICE:
        # the source stays referenced, so its id cannot be reused by another tensor
        _ON_DEVICE[key] = (tensor, tensor.to(device))
    return _ON_DEVICE[key][1]


@run_settings
def _pipeline_settings(hparam, dataset):
    hparam("pipeline", "auto", valid=choice(PIPELINES),
           help="input pipeline: gpu (uint8 cache, augment on the device), classic (PIL in workers) or auto")
    hparam("cache_dir", "",
           help="where the gpu pipeline keeps image caches (empty: $DOMAINBED_CACHE or ~/.cache/domainbed)")
