"""DomainBed's Debug28 and Debug224: three environments of 16 random images each, two classes,
what DomainBed's own tests train every algorithm on.

DomainBed draws the tensors from the global RNG, so they change with `--seed`; ours come from a
fixed generator, so every run and every fold sees the same ones (as with Synthetic). The images
are noise and the labels random: nothing is learnable, which is what a smoke test needs.
"""

import torch
from torch.utils.data import TensorDataset

from domainbed.datasets.base import MultipleDomainDataset
from domainbed.datasets.registry import register_dataset


class Debug(MultipleDomainDataset):
    ENVIRONMENTS = ["0", "1", "2"]
    N_WORKERS = 0
    GENERATED = True
    SAMPLES_PER_DOMAIN = 16
    num_classes = 2

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        for _ in self.ENVIRONMENTS:
            x = torch.randn(self.SAMPLES_PER_DOMAIN, *self.input_shape, generator=generator)
            y = torch.randint(0, self.num_classes, (self.SAMPLES_PER_DOMAIN,), generator=generator)
            self.datasets.append(TensorDataset(x, y))


@register_dataset("Debug28")
class Debug28(Debug):
    input_shape = (3, 28, 28)


@register_dataset("Debug224")
class Debug224(Debug):
    input_shape = (3, 224, 224)
