"""Data-parallel training of one run on N processes, with PyTorch's distributed package.

    torchrun --nproc_per_node N train_all.py NAME --dataset ... --algorithm ERM

torchrun starts N copies of the command and tells each its RANK, WORLD_SIZE and LOCAL_RANK;
`init` joins them into one process group: NCCL when the run is on GPUs (process i on GPU
LOCAL_RANK), Gloo on the CPU. Every process loads the same whole minibatch of every training
domain (same seeds) and keeps its contiguous share (`shard`), so the N shares concatenated in
rank order are the single-process batch and the update equals the single-process update on it:

- a loss that is a mean over the batch: each process's gradient is the gradient of its share's
  mean, and the mean of those over processes is the whole batch's. `Algorithm.backward` calls
  `average_gradients` after every backward pass, so the gradients a method reads (SAM's norm,
  GradSurgery's per-domain gradients) are already the whole batch's;
- a loss that depends non-linearly on a quantity of a domain's whole batch (per-domain risks,
  feature statistics) computes that quantity with `global_mean` or `all_gather`. Both give every
  process the whole batch's value; in the backward pass each process gets N times the
  derivative of the whole objective (the mean of the processes' losses) with respect to its own
  part (an all-reduce of the gradients that reach the quantity), and the gradient average
  divides the N back out. The chain rule of the whole batch's loss holds whether the processes'
  losses use the quantity alike (VREx's variance of the risks) or each with its own rows (MTL's
  domain embedding).

Methods declare which they are (`Algorithm.DATA_PARALLEL`); the others are refused in one line.
Everything else is every process's: evaluation, weight averaging, BatchNorm re-estimation and
early stopping run identically on every process (their inputs are identical), and only rank 0
writes files and prints.
"""

import os

import torch
import torch.distributed as dist

from domainbed.errors import UsageError


def launched_world_size() -> int:
    """The number of processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: torchrun's RANK until the process group exists (a refusal before it
    is printed once)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run's files and prints (rank 0, or the only process)."""
    return rank() == 0


def wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def init(device: str) -> str:
    """Join the process group torchrun describes (nothing without torchrun) and return the device
    this process trains on: `device` itself on one process; under torchrun `cuda:LOCAL_RANK` for
    auto (when there are GPUs) and cuda, cpu for cpu."""
    n = launched_world_size()
    if n <= 1:
        return device
    on_gpus = wants_cuda(device)
    if on_gpus and device not in ("cuda", "auto"):
        raise UsageError(f"--device {device} names one GPU; under torchrun each process takes the GPU of its "
                         "LOCAL_RANK: valid: --device auto, cuda or cpu")
    if dist.is_initialized():
        return f"cuda:{torch.cuda.current_device()}" if on_gpus else "cpu"
    if on_gpus:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            gpus = torch.cuda.device_count()
            raise UsageError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', n)} processes on this machine but "
                             f"it has {gpus} GPUs; valid: --nproc_per_node {gpus} at most, or --device cpu")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    dist.init_process_group("nccl" if on_gpus else "gloo")
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(value):
    """Rank 0's `value` (any picklable object) on every process."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def check_method(algorithm_class, name: str, data_parallel_names) -> None:
    """Under torchrun, refuse in one line a method that does not declare `DATA_PARALLEL`."""
    if launched_world_size() > 1 and not algorithm_class.data_parallel():
        raise UsageError(f"{name} trains on one process only (it does not declare DATA_PARALLEL: its update needs "
                         f"more than gradients averaged over shares, see docs/data_parallel.md); valid under "
                         f"torchrun: {', '.join(sorted(data_parallel_names))}")


def check_batchnorm(module: torch.nn.Module, device: str, name: str) -> None:
    """Under torchrun on the CPU, refuse in one line a model whose BatchNorm layers train: their
    statistics would be each share's, and SyncBatchNorm runs on GPUs only."""
    if launched_world_size() <= 1 or wants_cuda(device):
        return
    trained = trained_batchnorms(module)
    if trained:
        named = ", ".join(trained[:3]) + (", ..." if len(trained) > 3 else "")
        raise UsageError(f"{name} trains the statistics of {len(trained)} BatchNorm layers ({named}), which "
                         "cannot be synchronised across processes on the CPU (SyncBatchNorm needs GPUs); valid: "
                         "GPUs, one process, or frozen BatchNorm (pretrained weights with --freeze_bn True)")


def check_batch_size(batch_size: int, n: int | None = None) -> None:
    """Every process takes an equal share of every domain's minibatch."""
    n = launched_world_size() if n is None else n
    if n > 1 and batch_size % n:
        raise UsageError(f"batch_size {batch_size} does not split into {n} equal shares, one per process; "
                         f"valid: a multiple of {n}")


def shard(minibatches) -> list:
    """This process's contiguous share of every domain's minibatch (tuples of tensors of equal
    length), rank 0 taking the first rows."""
    n, r = world_size(), rank()
    if n == 1:
        return list(minibatches)
    shares = []
    for batch in minibatches:
        length = len(batch[0])
        check_batch_size(length, n)
        size = length // n
        shares.append(tuple(t[r * size:(r + 1) * size] for t in batch))
    return shares


def trained_batchnorms(module: torch.nn.Module) -> list:
    """The names of the BatchNorm layers that compute batch statistics in training mode (from
    scratch, or `freeze_bn False`); frozen ones (SWAD's default with pretrained weights) stay in
    eval mode and are the same on every process."""
    was_training = module.training
    module.train()
    names = [name for name, m in module.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    module.train(was_training)
    return names


def synchronize_batchnorm(module: torch.nn.Module, device) -> None:
    """Under data parallelism, make the BatchNorm layers that train compute the statistics of the
    whole batch (SyncBatchNorm), as the single-process run does; they keep their parameters and
    buffers (same state dict). On the CPU there is no SyncBatchNorm (`check_batchnorm` refuses)."""
    if world_size() == 1 or torch.device(device).type != "cuda" or not trained_batchnorms(module):
        return
    for name, child in module.named_children():
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)


# about 100 MB of float32 per all-reduce: few calls, bounded extra memory
BUCKET_ELEMENTS = 25_000_000


@torch.no_grad()
def average_gradients(parameters) -> None:
    """Replace every `.grad` of `parameters` by its mean over the processes (same parameters, same
    order on every process: the module is the same)."""
    n = world_size()
    if n == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    buckets = {}
    for g in grads:
        buckets.setdefault((g.dtype, g.device), [[]])
        bucket = buckets[(g.dtype, g.device)]
        if bucket[-1] and sum(t.numel() for t in bucket[-1]) + g.numel() > BUCKET_ELEMENTS:
            bucket.append([])
        bucket[-1].append(g)
    for chunks in buckets.values():
        for chunk in chunks:
            flat = torch.cat([g.reshape(-1) for g in chunk])
            dist.all_reduce(flat)
            flat.div_(n)
            for g, part in zip(chunk, flat.split([g.numel() for g in chunk])):
                g.copy_(part.view_as(g))


class _GlobalMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local):
        total = local.detach().clone()
        dist.all_reduce(total)
        return total / world_size()

    @staticmethod
    def backward(ctx, grad):
        # N x d(mean of the processes' losses)/d(local) = the mean of the incoming gradients
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total / world_size()


def global_mean(local: torch.Tensor) -> torch.Tensor:
    """The mean over the processes of `local` (a share's mean: the whole batch's mean, shares
    being equal), differentiable towards this process's `local` (see the module docstring)."""
    if world_size() == 1:
        return local
    return _GlobalMean.apply(local)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local):
        parts = [torch.empty_like(local) for _ in range(world_size())]
        dist.all_gather(parts, local.detach().contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        # N x d(mean of the processes' losses)/d(this share's rows) = the sum of their gradients
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        size = len(total) // world_size()
        return total[rank() * size:(rank() + 1) * size]


def all_gather(local: torch.Tensor) -> torch.Tensor:
    """The whole batch's rows: every process's `local` (equal lengths) concatenated in rank order,
    differentiable towards this process's rows (see the module docstring)."""
    if world_size() == 1:
        return local
    return _AllGather.apply(local)


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """`values` (the stacked stats of the steps the trainer reads at once) averaged over the
    processes: a loss over a share becomes the whole batch's. One all-reduce per read, not per step."""
    n = world_size()
    if n == 1:
        return values
    values = values.float()  # Gloo reduces no bfloat16
    dist.all_reduce(values)
    return values / n