"""Wall-clock timing for the benchmark scripts, with the device synchronised around the work so
that asynchronous CUDA kernels are counted."""

import time

import torch


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
