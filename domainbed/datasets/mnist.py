"""RotatedMNIST and ColoredMNIST, built as DomainBed builds them from the raw MNIST files.

The 70,000 train and test digits are pooled, shuffled once, and dealt round-robin to the
environments; each environment then applies its rotation or colouring. DomainBed shuffles and
colours with the global torch RNG, so its environments change with `--seed`; ours use a fixed
generator, so the environments are the same in every run and every fold.
"""

import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from domainbed.datasets.base import MultipleDomainDataset
from domainbed.datasets.registry import register_dataset
from domainbed.errors import UsageError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
ENVIRONMENT_SEED = 0


def find_mnist_file(root: Path, name: str) -> Path:
    # root/raw: DomainBed's README passes --data_dir=.../data/MNIST/, the folder torchvision fills
    candidates = [root / "MNIST" / "raw", root / "MNIST", root / "raw", root]
    for folder in candidates:
        for path in (folder / name, folder / f"{name}.gz"):
            if path.is_file():
                return path
    raise UsageError(
        f"MNIST file {name}(.gz) not found under {root / 'MNIST' / 'raw'}; download it with "
        "python -m domainbed.scripts.download --data_dir DIR --datasets MNIST"
    )


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (MNIST's format), gzipped or not, as a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
        magic = int.from_bytes(data[0:4], "big")
        n_dims = magic & 0xFF
        if magic >> 8 != 0x08 or n_dims not in (1, 3):
            raise ValueError(f"bad magic number {magic:#x}")
        shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims)]
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims)
        return torch.from_numpy(array.reshape(shape).copy())
    except (OSError, ValueError, EOFError) as error:
        raise UsageError(f"cannot read MNIST file {path}: {error}") from None


def load_mnist(root) -> tuple[torch.Tensor, torch.Tensor]:
    """All 70,000 digits (train then test) as (N, 28, 28) uint8 and their (N,) labels."""
    root = Path(root)
    files = {key: read_idx(find_mnist_file(root, name)) for key, name in MNIST_FILES.items()}
    images = torch.cat([files["train_images"], files["test_images"]])
    labels = torch.cat([files["train_labels"], files["test_labels"]]).long()
    return images, labels


class MultipleEnvironmentMNIST(MultipleDomainDataset):
    N_WORKERS = 0
    ENVIRONMENT_PARAMETERS = ()

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        images, labels = load_mnist(root)
        generator = torch.Generator().manual_seed(ENVIRONMENT_SEED)
        shuffle = torch.randperm(len(images), generator=generator)
        images, labels = images[shuffle], labels[shuffle]
        n_envs = len(self.ENVIRONMENT_PARAMETERS)
        self.datasets = [
            self.make_environment(images[i::n_envs], labels[i::n_envs], parameter, generator)
            for i, parameter in enumerate(self.ENVIRONMENT_PARAMETERS)
        ]

    def make_environment(self, images, labels, parameter, generator):
        raise NotImplementedError


@register_dataset("RotatedMNIST")
class RotatedMNIST(MultipleEnvironmentMNIST):
    """Digits rotated by 0, 15, ..., 75 degrees (bilinear, zero fill); 10 classes."""

    ENVIRONMENTS = ["0", "15", "30", "45", "60", "75"]
    ENVIRONMENT_PARAMETERS = (0, 15, 30, 45, 60, 75)
    input_shape = (1, 28, 28)
    num_classes = 10

    def make_environment(self, images, labels, angle, generator):
        rotated = np.stack([
            np.asarray(Image.fromarray(image).rotate(angle, resample=Image.BILINEAR, fillcolor=0))
            for image in images.numpy()
        ])
        x = torch.from_numpy(rotated).float().div_(255.0).unsqueeze(1)
        return TensorDataset(x, labels)


@register_dataset("ColoredMNIST")
class ColoredMNIST(MultipleEnvironmentMNIST):
    """Arjovsky et al.'s binary task: label = digit < 5 with 25% label noise; the colour (one of
    two channels) agrees with the label except with probability 0.1, 0.2 and 0.9."""

    ENVIRONMENTS = ["+90%", "+80%", "-90%"]
    ENVIRONMENT_PARAMETERS = (0.1, 0.2, 0.9)
    input_shape = (2, 28, 28)
    num_classes = 2

    def make_environment(self, images, labels, color_flip, generator):
        def bernoulli(p, n):
            return (torch.rand(n, generator=generator) < p).float()

        binary = (labels < 5).float()
        binary = (binary - bernoulli(0.25, len(binary))).abs()
        colors = (binary - bernoulli(color_flip, len(binary))).abs()
        x = torch.stack([images, images], dim=1).float()
        x[torch.arange(len(x)), (1 - colors).long()] = 0
        return TensorDataset(x.div_(255.0), binary.long())
