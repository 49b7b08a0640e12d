"""Per-sample batched augmentation: ours (gpu_augment.py) against the library alternatives.

    python -m domainbed.scripts.benchmark_augment [--batch_size 96 --image_size 224 --device cuda]

Rows, each the best of `--repeats` timings (robust on a shared machine) of one batch of `batch_size` uint8 images (cache slots of 8/7 the
input size) to normalised float inputs with SWAD's training augmentation:
- ours: parameters drawn on the CPU, one batched pass on the device;
- torchvision v2 loop: `transforms.v2` draws one set of parameters per call, so per-sample
  augmentation is a Python loop over the images;
- kornia (only when it is installed; it is not a dependency): `kornia.augmentation` with
  per-sample parameters, whose ColorJitter applies one order of the colour operations to the
  whole batch.
"""

import argparse

import torch
import torchvision.transforms.v2 as T2

from domainbed.scripts.timing import fastest
from domainbed.data.cache import train_cache_size
from domainbed.data.gpu_augment import TrainAugment
from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--batch_size", type=int, default=96)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)





def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    size, slot = args.image_size, train_cache_size(args.image_size)
    images = torch.randint(0, 256, (args.batch_size, 3, slot, slot), dtype=torch.uint8, device=device)
    sizes = torch.full((args.batch_size, 2), slot)
    augment = TrainAugment(size)
    generator = torch.Generator().manual_seed(0)
    rows = {"ours": lambda: augment.apply(images, augment.draw(sizes, generator))}

    per_sample = T2.Compose([
        T2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True), T2.RandomHorizontalFlip(),
        T2.ColorJitter(0.3, 0.3, 0.3, 0.3), T2.RandomGrayscale(0.1), T2.ToDtype(torch.float32, scale=True),
        T2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    rows["torchvision v2 loop"] = lambda: torch.stack([per_sample(image) for image in images])

    try:
        import kornia.augmentation as K
    except ImportError:
        print("kornia is not installed: its row is skipped")
    else:
        pipeline = torch.nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(0.7, 1.0)), K.RandomHorizontalFlip(),
            K.ColorJitter(0.3, 0.3, 0.3, 0.3, p=1.0), K.RandomGrayscale(p=0.1),
            K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)),
        ).to(device)
        rows["kornia"] = lambda: pipeline(images.float() / 255)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.batch_size} images of {slot} px -> {size} px on {name}")
    reference = None
    for label, fn in rows.items():
        seconds = fastest(fn, device, args.repeats)
        reference = reference or seconds
        print(f"{label:>22}: {1000 * seconds:8.1f} ms/batch  {args.batch_size / seconds:9.0f} img/s  "
              f"{seconds / reference:5.2f}x ours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
