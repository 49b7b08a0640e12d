"""Per-sample batched augmentation: ours (gpu_augment.py) against the library alternatives.

    python -m domainbed.scripts.benchmark augment [--batch_size 96 --image_size 224 --device cuda]

Rows, each the best of `--repeats` timings (robust on a shared machine) of one batch of
`batch_size` uint8 images (cache slots of 8/7 the input size) to normalised float inputs with
SWAD's training augmentation:
- ours: parameters drawn on the CPU, one batched pass on the device;
- torchvision v2 loop: `transforms.v2` draws one set of parameters per call, so per-sample
  augmentation is a Python loop over the images;
- kornia (only when it is installed; it is not a dependency): `kornia.augmentation` with
  per-sample parameters, whose ColorJitter applies one order of the colour operations to the
  whole batch.
"""

import torch
import torchvision.transforms.v2 as T2
from prettytable import PrettyTable

from domainbed.data.cache import train_cache_size
from domainbed.data.gpu_augment import TrainAugment
from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from domainbed.scripts.timing import device_name, fastest
from domainbed.training.trainer import resolve_device


def add_arguments(parser) -> None:
    parser.add_argument("--batch_size", type=int, default=96)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto")


def augmentations(size: int, device) -> dict:
    """{label: function of a uint8 batch}."""
    augment = TrainAugment(size)
    generator = torch.Generator().manual_seed(0)

    def ours(images):
        sizes = torch.full((len(images), 2), images.shape[-1])
        return augment.apply(images, augment.draw(sizes, generator))

    per_sample = T2.Compose([
        T2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True), T2.RandomHorizontalFlip(),
        T2.ColorJitter(0.3, 0.3, 0.3, 0.3), T2.RandomGrayscale(0.1), T2.ToDtype(torch.float32, scale=True),
        T2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    rows = {"ours": ours, "torchvision v2 loop": lambda images: torch.stack([per_sample(i) for i in images])}
    try:
        import kornia.augmentation as K
    except ImportError:
        print("kornia is not installed: its row is skipped")
        return rows
    pipeline = torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(0.7, 1.0)), K.RandomHorizontalFlip(),
        K.ColorJitter(0.3, 0.3, 0.3, 0.3, p=1.0), K.RandomGrayscale(p=0.1),
        K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)),
    ).to(device)
    rows["kornia"] = lambda images: pipeline(images.float() / 255)
    return rows


def main(args) -> str:
    device = resolve_device(args.device)
    size, slot = args.image_size, train_cache_size(args.image_size)
    images = torch.randint(0, 256, (args.batch_size, 3, slot, slot), dtype=torch.uint8, device=device)
    table = PrettyTable(["augmentation", "ms / batch", "img/s", "x ours"])
    reference = None
    for label, augment in augmentations(size, device).items():
        seconds = fastest(lambda: augment(images), device, args.repeats)
        reference = reference or seconds
        table.add_row([label, f"{1000 * seconds:.1f}", f"{args.batch_size / seconds:.0f}", f"{seconds / reference:.2f}"])
    return f"{args.batch_size} images of {slot} px -> {size} px on {device_name(device)}\n{table}"
