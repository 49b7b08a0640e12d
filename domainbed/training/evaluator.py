"""Accuracy and loss of an algorithm on every evaluation split, as SWAD's Evaluator.

Split names are `env{i}_in` / `env{i}_out`. Summaries average over environments: `train_in`,
`train_out`, `test_in`, `test_out` (accuracies) and `tr_outloss`, the training-domain validation
loss SWAD's averaging watches. In `fast` mode the training domains' `in` splits, which no
selection row uses, are skipped. All splits share one loader (one pool of workers), and inputs
of a training domain are predicted with `env=` that domain's index. An empty split (a tiny
environment's holdout) is absent from the results and from the summaries' averages: missing,
never 0.0.
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm

from domainbed.data import eval_loader
from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import int_at_least


@dataclass
class EvalSplit:
    name: str
    dataset: Dataset
    env: int
    inout: str
    train_domain: int | None


class Evaluator:
    def __init__(self, splits, test_envs, batch_size, num_workers, device, evalmode="fast",
                 make_loader=None, autocast=contextlib.nullcontext):
        """`make_loader(datasets, batch_size)`, when given, replaces the DataLoader over the
        evaluated splits (the gpu input pipeline's cached batches); `autocast()` is the run's
        mixed-precision context (domainbed/training/precision.py)."""
        self.test_envs = list(test_envs)
        self.device = torch.device(device)
        self.autocast = autocast
        self.splits = [
            s for s in splits if not (evalmode == "fast" and s.inout == "in" and s.train_domain is not None)
        ]
        self._boundaries = []
        start = 0
        for split in self.splits:
            self._boundaries.append((start, start + len(split.dataset)))
            start += len(split.dataset)
        if make_loader is not None:
            self.loader = make_loader([s.dataset for s in self.splits], batch_size)
        else:
            self.loader = eval_loader(
                ConcatDataset([s.dataset for s in self.splits]),
                batch_size,
                num_workers,
                pin_memory=self.device.type == "cuda",
            )

    @torch.inference_mode()
    def evaluate(self, algorithm):
        """(accuracies per split, losses per split, summaries)."""
        was_training = algorithm.training
        algorithm.eval()
        n = len(self.splits)
        correct = torch.zeros(n, dtype=torch.float64, device=self.device)
        loss_sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        offset = 0
        for x, y in tqdm(self.loader, desc="evaluating", leave=False, dynamic_ncols=True, disable=None):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            for index, (begin, end) in enumerate(self._boundaries):
                lo, hi = max(begin, offset), min(end, offset + len(x))
                if lo >= hi:
                    continue
                xs, ys = x[lo - offset: hi - offset], y[lo - offset: hi - offset]
                with self.autocast():
                    logits = algorithm.predict(xs, env=self.splits[index].train_domain).float()
                correct[index] += (logits.argmax(1) == ys).sum()
                loss_sum[index] += F.cross_entropy(logits, ys, reduction="sum")
            offset += len(x)
        algorithm.train(was_training)
        sizes = [end - begin for begin, end in self._boundaries]
        correct, loss_sum = correct.tolist(), loss_sum.tolist()
        accuracies, losses = {}, {}
        for index, split in enumerate(self.splits):
            if sizes[index]:  # an empty split has no accuracy: absent, never 0.0
                accuracies[split.name] = correct[index] / sizes[index]
                losses[split.name] = loss_sum[index] / sizes[index]
        return accuracies, losses, self._summaries(accuracies, losses)

    def _summaries(self, accuracies, losses):
        """Averages over the non-empty splits; a summary whose splits are all empty is absent."""
        groups = {}
        for split in self.splits:
            side = "test" if split.train_domain is None else "train"
            if split.name in accuracies:
                groups.setdefault(f"{side}_{split.inout}", []).append(split.name)
        summaries = {key: sum(accuracies[n] for n in names) / len(names) for key, names in sorted(groups.items())}
        if "train_out" in groups:
            summaries["tr_outloss"] = sum(losses[n] for n in groups["train_out"]) / len(groups["train_out"])
        return summaries


@run_settings
def _evaluation_settings(hparam, dataset):
    hparam("test_batchsize", 128, valid=int_at_least(1), help="batch size of the evaluation loader")
