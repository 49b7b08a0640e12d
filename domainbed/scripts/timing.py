"""What the benchmark subcommands share: wall-clock timing with the device synchronised around
the work (so asynchronous CUDA kernels are counted), round-robin medians, the device's name,
random minibatches and an algorithm built from PACS's defaults without pretrained weights."""

import statistics
import time

import torch

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> float:
    """Seconds one call of `function()` takes."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def fastest(function, device: torch.device, repeats: int) -> float:
    """The fastest of `repeats` timings after one warm-up call: on a shared machine the minimum
    is what the work costs, the rest is waiting for the cores."""
    function()
    return min(timed(function, device) for _ in range(repeats))


def round_robin(functions: dict, device: torch.device, warmup: int, rounds: int) -> dict:
    """{label: median seconds}: the functions take turns, one call each per round, the order
    rotating every round, so that other load on the machine falls on all of them alike."""
    labels = list(functions)
    times = {label: [] for label in labels}
    for round_ in range(warmup + rounds):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            elapsed = timed(functions[label], device)
            if round_ >= warmup:
                times[label].append(elapsed)
    return {label: statistics.median(values) for label, values in times.items()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def random_minibatches(n_domains: int, batch_size: int, input_shape, n_classes: int, device, seed: int = 0) -> list:
    """One (x, y) pair per domain of standard normal inputs and uniform labels."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, *input_shape, generator=generator).to(device),
             torch.randint(0, n_classes, (batch_size,), generator=generator).to(device))
            for _ in range(n_domains)]


def build_algorithm(name: str, input_shape, n_classes: int, n_domains: int, device, **overrides):
    """`name` with PACS's default hparams, no pretrained weights, `overrides` on top, seed 0."""
    hparams = {**hparams_registry.default_hparams(name, "PACS"), "pretrained": False, **overrides}
    torch.manual_seed(0)
    return get_algorithm_class(name)(tuple(input_shape), n_classes, n_domains, hparams).to(device)
