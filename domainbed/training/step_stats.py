"""The numbers `update` returns, kept on the device until the trainer logs them.

On a GPU a training step is a queue of kernels that the host fills ahead of the device; reading
one number of it on the host (`.item()`, `float()`, `.tolist()`) waits until the queue has
drained, and the device idles while the host fills it again. So `update` returns its statistics
as 0-dim tensors (python floats are accepted too) and the trainer reads them on the host only
when it logs them: every `tb_freq` steps and at every checkpoint, all the steps since the last
read in one transfer. What it reads is exactly what `.item()` gave at each step (a float32 or
bfloat16 value is exact as a python float), so records, tables and resumed runs are unchanged;
checks on the values (a non-finite loss stops the run) run at the read, naming the step that
produced the value, before that step's checkpoint could be written.
"""

import torch


def as_numbers(stats: dict) -> dict:
    """`update`'s stats with every value a python number, for a caller outside the training loop
    (a test, a notebook): each tensor is read on the host, a synchronisation on a GPU."""
    return {key: value.item() if torch.is_tensor(value) else value for key, value in stats.items()}


class PendingStats:
    """The stats of the steps since the last `read`, tensors left where they are (detached, so
    that no autograd graph outlives its step)."""

    def __init__(self):
        self._steps = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, stats: dict) -> None:
        self._steps.append((step, {key: value.detach() if torch.is_tensor(value) else value
                                   for key, value in stats.items()}))

    def read(self, combine=None) -> list:
        """[(step, {key: python number})] of every pending step, in step order, then none pending.
        The tensors of one device and dtype are stacked and copied to the host together, so a
        read waits for the device once however many steps it covers; `combine(stacked)`, when
        given, maps each stack first (the mean over data-parallel processes)."""
        groups = {}
        for _, stats in self._steps:
            for value in stats.values():
                if torch.is_tensor(value):
                    groups.setdefault((value.device, value.dtype), []).append(value)
        numbers = {}
        for tensors in groups.values():
            stacked = torch.stack([t.reshape(()) for t in tensors])
            for tensor, number in zip(tensors, (combine(stacked) if combine else stacked).tolist()):
                numbers[id(tensor)] = number
        read = [(step, {key: numbers[id(value)] if torch.is_tensor(value) else value for key, value in stats.items()})
                for step, stats in self._steps]
        self._steps = []
        return read
