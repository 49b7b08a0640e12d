"""The input pipeline: what the trainer and the evaluator read batches from.

An `InputPipeline` gives the training loop an endless iterator of per-domain minibatches, already
on the device, and the evaluator a re-iterable of (x, y) batches over the evaluation splits. Two
implementations share it, so the trainer never asks which one it has:

- `ClassicPipeline` (`--pipeline classic`, the reference): PIL transforms in DataLoader workers,
  one InfiniteDataLoader per training domain and one DataLoader over the evaluation splits
  (loaders.py);
- `GpuPipeline` (`--pipeline gpu`): uint8 caches augmented on the device (gpu_pipeline.py, which
  also holds `build_pipeline`, the choice between the two).

Every draw either makes comes from a generator seeded by the run: the items and augmentation of
training step t are a function of (stream seed, t), and the evaluation loader's workers take their
base seed from `eval_seed`, not from the global RNG (which would shift every later draw of a
resumed run, RSC's and Mixstyle's included, by the evaluation loader's first pass).
"""

import torch
from torch.utils.data import ConcatDataset

from domainbed.data.loaders import InfiniteDataLoader, eval_loader, num_workers_for


class InputPipeline:
    name = ""

    def train_minibatches(self, splits, seeds, batch_size: int, start_step: int = 0):
        """Endless iterator of tuples of (x, y) on the device, one per training split, from
        `start_step` on; the items of step t depend only on (seeds, t)."""
        raise NotImplementedError

    def eval_batches(self, datasets, batch_size: int):
        """Re-iterable of (x, y) batches over `datasets` (the evaluation splits), in order."""
        raise NotImplementedError


def to_device(batch, device, channels_last: bool):
    x, y = batch
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


class ClassicPipeline(InputPipeline):
    name = "classic"

    def __init__(self, dataset, hparams: dict, device, eval_seed: int = 0):
        self.device = torch.device(device)
        self.channels_last = self.device.type == "cuda"
        self.requested_workers = hparams["num_workers"]
        self.dataset_workers = dataset.N_WORKERS
        self.eval_seed = eval_seed

    def workers(self, n_loaders: int) -> int:
        return num_workers_for(self.requested_workers, self.dataset_workers, n_loaders)

    def train_minibatches(self, splits, seeds, batch_size: int, start_step: int = 0):
        workers = self.workers(len(splits))
        loaders = [InfiniteDataLoader(split, batch_size, workers, seed, pin_memory=self.channels_last,
                                      start_step=start_step) for split, seed in zip(splits, seeds)]
        return self._steps(loaders)

    def _steps(self, loaders):
        """The loaders' batches side by side; when one fails (an unreadable image), or the stream is
        closed, every loader stops its workers, so that none keeps the process alive."""
        try:
            for batches in zip(*loaders):
                yield tuple(to_device(batch, self.device, self.channels_last) for batch in batches)
        finally:
            for loader in loaders:
                loader.close()

    def eval_batches(self, datasets, batch_size: int):
        return eval_loader(ConcatDataset(datasets), batch_size, self.workers(1), self.eval_seed,
                           pin_memory=self.channels_last)
