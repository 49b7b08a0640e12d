"""DomainBed's save_images.py: some representative images of every environment of each dataset.

    python -m domainbed.scripts.save_images --data_dir DATA --output_dir OUT [--datasets PACS ...] \
        [--n_images 50] [--seed 0]

As DomainBed's, OUT gets `--n_images` images drawn at random from each environment, as PNGs named
`{dataset}_env{i}{environment}_{k}_idx{index}_class{label}.png`; besides them, `{dataset}_grid.png`
shows the first eight of each environment, one row per environment. Image folders are resized to
the dataset's `image_size` (224) as evaluation sees them, without the normalisation; tensors (the
MNIST sets) are shown as they are, a two-channel ColoredMNIST digit with an empty blue channel
and values outside [0, 1] (Debug28's noise) rescaled to it.

What differs: the draws are seeded (`--seed`), so the same images come back; every class may be
drawn (DomainBed redraws labels above 10, to keep DomainNet's first classes); the datasets are
those of `--datasets`, by default DomainBed's six plus PACS and VLCS, and those of the defaults
whose files are not under `--data_dir` are skipped with a line (DomainBed stops at the first one).
"""

import argparse
import random
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import functional as TF
from torchvision.utils import make_grid, save_image

from domainbed import cli, hparams_registry
from domainbed.datasets import DATASETS, get_dataset_class
from domainbed.errors import UsageError

# DomainBed's list, then the two it trains on most that it leaves out
DEFAULT_DATASETS = ["OfficeHome", "TerraIncognita", "DomainNet", "RotatedMNIST", "ColoredMNIST", "SVIRO",
                    "PACS", "VLCS"]
GRID_COLUMNS = 8

EXAMPLE = """examples:
  python -m domainbed.scripts.save_images --data_dir DATA --output_dir images
  python -m domainbed.scripts.save_images --data_dir DATA --output_dir images --datasets PACS --n_images 8
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Save some representative images of each dataset, as DomainBed's "
                                                 "save_images.py", epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=str, required=True)
    parser.add_argument("--output_dir", type=str, required=True)
    parser.add_argument("--datasets", nargs="+", default=None,
                        help=f"default: {' '.join(DEFAULT_DATASETS)}, those present under --data_dir; any of "
                             f"{', '.join(sorted(DATASETS))}")
    parser.add_argument("--n_images", type=int, default=50, help="images per environment (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the draws (default: %(default)s)")
    return parser


def as_picture(x, image_size: int) -> torch.Tensor:
    """A (3, H, W) tensor in [0, 1] of a dataset's raw input (a PIL image or a tensor)."""
    if isinstance(x, Image.Image):
        return TF.to_tensor(x.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR))
    x = x.detach().float().cpu()
    if x.dim() == 2:
        x = x[None]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 2:
        x = torch.cat([x, torch.zeros_like(x[:1])])
    if x.min() < 0 or x.max() > 1:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    return x[:3]


def save_dataset(name: str, data_dir, output_dir: Path, n_images: int, rng: random.Random) -> int:
    """Save `name`'s images; returns how many."""
    hparams = {**hparams_registry.default_hparams("ERM", name), **hparams_registry.run_setting_defaults("ERM", name)}
    dataset = get_dataset_class(name)(data_dir, [], hparams)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows, saved = [], 0
    for env_index, (environment, env) in enumerate(zip(dataset.environments, dataset)):
        pictures = []
        for k in range(n_images):
            index = rng.randrange(len(env))
            x, y = env[index]
            picture = as_picture(x, hparams["image_size"])
            save_image(picture, output_dir / f"{name}_env{env_index}{environment}_{k}_idx{index}_class{int(y)}.png")
            pictures.append(picture)
            saved += 1
        rows.append(pictures[:GRID_COLUMNS])
    columns = max(len(row) for row in rows)
    if columns:
        blank = torch.ones_like(rows[0][0])
        cells = [cell for row in rows for cell in row + [blank] * (columns - len(row))]
        save_image(make_grid(cells, nrow=columns, padding=2, pad_value=1.0), output_dir / f"{name}_grid.png")
    return saved


def run(argv) -> dict:
    """{dataset: images saved} of the command line `argv`."""
    args = make_parser().parse_args(argv)
    if args.n_images < 1:
        raise UsageError(f"--n_images {args.n_images} is out of range; valid: 1 or more")
    names = args.datasets or DEFAULT_DATASETS
    for name in names:
        get_dataset_class(name)  # an unknown name is an error before anything is read
    output_dir = Path(args.output_dir)
    saved = {}
    for name in names:
        rng = random.Random(f"{args.seed}:{name}")
        try:
            saved[name] = save_dataset(name, args.data_dir, output_dir, args.n_images, rng)
        except UsageError as error:
            if args.datasets:
                raise
            print(f"skipped {name}: {error}", file=sys.stderr)
            continue
        print(f"{name}: {saved[name]} images in {output_dir}")
    if not saved:
        raise UsageError(f"none of {', '.join(names)} is under --data_dir {args.data_dir}; give --datasets, or the "
                         "folder python -m domainbed.scripts.download wrote")
    return saved


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def work():
        run(argv)

    return cli.run_main(work, "interrupted: the images written so far stay in --output_dir")


if __name__ == "__main__":
    sys.exit(main())
