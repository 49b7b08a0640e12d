"""DomainBed's `update_count`, readable on the host without waiting for the device.

DANN alternates its steps and IRM / VREx anneal their penalty by the number of updates so far,
which DomainBed keeps in a buffer (so checkpoints carry it, and so do ours: the state dict key
stays `update_count`). Reading that buffer in every step (`.item()`) makes the host wait for the
device; the count is therefore mirrored in a python int, updated with the buffer and read back
from it only once after a state dict was loaded.
"""

import torch
import torch.nn as nn


def register_update_count(module: nn.Module) -> None:
    """The buffer `update_count` (a one-element long tensor, DomainBed's) and its host mirror."""
    module.register_buffer("update_count", torch.tensor([0]))
    module._host_update_count = 0
    module.register_load_state_dict_post_hook(_forget_host_count)


def _forget_host_count(module, incompatible_keys) -> None:
    module._host_update_count = None


def updates_so_far(module: nn.Module) -> int:
    """The number of updates counted so far (one read of the buffer after a state load)."""
    if module._host_update_count is None:
        module._host_update_count = int(module.update_count.item())
    return module._host_update_count


def count_update(module: nn.Module) -> None:
    # the host count first: read after the increment, a count forgotten by a state load would be one ahead
    count = updates_so_far(module)
    module.update_count += 1
    module._host_update_count = count + 1
