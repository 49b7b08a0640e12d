"""A small in-memory dataset for tests: four domains of (3, 28, 28) images, three classes.

Each class has a fixed random pattern; each domain adds its own colour cast and noise level, so
a model can learn the classes and the domains really differ. Deterministic: the same tensors in
every run.
"""

import torch
from torch.utils.data import TensorDataset

from domainbed.datasets.base import MultipleDomainDataset
from domainbed.datasets.registry import register_dataset


@register_dataset("Synthetic")
class Synthetic(MultipleDomainDataset):
    ENVIRONMENTS = ["d0", "d1", "d2", "d3"]
    N_STEPS = 100
    CHECKPOINT_FREQ = 20
    N_WORKERS = 0
    GENERATED = True
    SAMPLES_PER_DOMAIN = 60
    input_shape = (3, 28, 28)
    num_classes = 3

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        patterns = torch.randn(self.num_classes, *self.input_shape, generator=generator)
        for domain in range(len(self.ENVIRONMENTS)):
            colour_cast = torch.randn(3, 1, 1, generator=generator)
            noise = 0.5 + 0.5 * domain
            labels = torch.arange(self.SAMPLES_PER_DOMAIN) % self.num_classes
            x = patterns[labels] + colour_cast + noise * torch.randn(
                self.SAMPLES_PER_DOMAIN, *self.input_shape, generator=generator
            )
            self.datasets.append(TensorDataset(x, labels))
