"""Datasets stored as one folder per domain and one sub-folder per class (DomainBed's layout)."""

import os
import sys
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image, UnidentifiedImageError

from domainbed.datasets import transforms
from domainbed.datasets.base import MultipleDomainDataset
from domainbed.datasets.registry import register_dataset
from domainbed.errors import UsageError
from domainbed.hparams.declare import run_settings
from domainbed.networks import input_normalization

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB, whatever its mode: 16-bit and 32-bit grey are scaled to 8 bits
    (not clipped, which would turn a 16-bit photograph white), float grey in [0, 1] is scaled by
    255 (other floats are clipped to [0, 255]), and transparent pixels (RGBA, LA, PA, palettes
    with a transparent index) are composited onto white, as a viewer shows them."""
    if image.mode in _SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float64) * (255 / 65535)
        return Image.fromarray(np.round(grey).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        finite = grey[np.isfinite(grey)]
        high = finite.max() if finite.size else 0
        if image.mode == "I" and high > 255:
            grey = grey * (255 / 65535)  # 16-bit files that Pillow opened as 32-bit
        elif image.mode == "F" and finite.size and finite.min() >= 0 and high <= 1:
            grey = grey * 255
        grey = np.clip(np.nan_to_num(grey), 0, 255)
        return Image.fromarray(np.round(grey).astype(np.uint8), "L").convert("RGB")
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def load_rgb(path) -> Image.Image:
    """The image at `path` as RGB (see `to_rgb`); an unreadable or truncated file is an error naming it."""
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            image.load()
            return to_rgb(image)
    except UnidentifiedImageError:
        raise UsageError(f"cannot read image {path}: not an image Pillow can decode (corrupt, truncated "
                         "or of an unknown format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UsageError(f"cannot read image {path}: {error}") from None


class DomainFolder(torch.utils.data.Dataset):
    """One domain: `root/<class>/<image>`, classes indexed in the order of `classes`.

    With `skip_bad_images`, every image is decoded once here and the unreadable ones are left
    out (listed in `skipped`, as (path, reason)); otherwise an unreadable image is an error
    naming it when it is loaded."""

    def __init__(self, root: Path, classes, skip_bad_images: bool = False):
        self.root = root
        self.classes = list(classes)
        self.samples = []
        self.skipped = []
        for label, name in enumerate(self.classes):
            files = sorted(f for f in os.listdir(root / name) if _is_image(f))
            if not files:
                raise UsageError(f"class folder {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.samples.extend((root / name / f, label) for f in files)
        if skip_bad_images:
            self.samples = [sample for sample in self.samples if self._readable(sample[0])]
        self.targets = [label for _, label in self.samples]

    def _readable(self, path) -> bool:
        try:
            load_rgb(path)
        except UsageError as error:
            self.skipped.append((path, str(error)))
            return False
        return True

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            return load_rgb(path), label
        except UsageError as error:
            raise UsageError(f"{error}; --skip_bad_images True leaves unreadable images out, and "
                             "python -m domainbed.scripts.download --check_images lists them all") from None

    def __len__(self):
        return len(self.samples)


def _subfolders(path: Path):
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))


def _has_images(path: Path) -> bool:
    return any(entry.is_file() and _is_image(entry.name) for entry in os.scandir(path))


def _holds_domains(path: Path) -> bool:
    """Whether `path` looks like a folder of domains: some `path/<domain>/<class>/` holds images."""
    return any(_has_images(path / domain / name) for domain in _subfolders(path) for name in _subfolders(path / domain))


def dataset_folder(data_dir) -> Path:
    """The folder of domains that `--dataset ImageFolder --data_dir DATA` means: DATA itself, or,
    as every other dataset takes the parent of its folder, the one dataset folder inside DATA. A
    DATA holding several dataset folders is an error naming them."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir() or _holds_domains(data_dir):
        return data_dir
    datasets = [name for name in _subfolders(data_dir) if _holds_domains(data_dir / name)]
    if len(datasets) == 1:
        return data_dir / datasets[0]
    if len(datasets) > 1:
        raise UsageError(f"--data_dir {data_dir} holds several datasets ({', '.join(datasets)}); name the one to "
                         f"train on, e.g. --data_dir {data_dir / datasets[0]}")
    return data_dir  # no images anywhere: the checks of the domains say what is missing


class MultipleEnvironmentImageFolder(MultipleDomainDataset):
    """Environments are the folders `DOMAIN_DIRS` under `root/DIRECTORY` (every sub-folder, sorted,
    when DOMAIN_DIRS is None); classes are the sorted class folders, shared by all domains, so class
    indices match torchvision's ImageFolder and DomainBed."""

    DIRECTORY = None
    DOMAIN_DIRS = None
    N_WORKERS = 8
    N_STEPS = 5000
    CHECKPOINT_FREQ = 100

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        data_root = Path(root) / self.DIRECTORY if self.DIRECTORY else Path(root)
        if not data_root.is_dir():
            raise UsageError(
                f"data directory {data_root} does not exist; pass --data_dir with the folder that contains "
                f"{self.DIRECTORY or 'the domain folders'} (python -m domainbed.scripts.download --data_dir DIR "
                "fetches the public datasets)"
            )
        if self.DIRECTORY is None:
            data_root = dataset_folder(data_root)
        found = _subfolders(data_root)
        domain_dirs = list(self.DOMAIN_DIRS) if self.DOMAIN_DIRS else found
        if not domain_dirs:
            raise UsageError(f"data directory {data_root} has no domain folders")
        for name in domain_dirs:
            if name not in found:
                raise UsageError(
                    f"domain folder {data_root / name} does not exist; expected {', '.join(domain_dirs)}, "
                    f"found {', '.join(found) or 'nothing'}"
                )
        classes_of = {name: _subfolders(data_root / name) for name in domain_dirs}
        all_classes = sorted(set().union(*classes_of.values()))
        for name, classes in classes_of.items():
            if not classes:
                holds = "images but no class folders" if _has_images(data_root / name) else "no class folders"
                raise UsageError(
                    f"domain folder {data_root / name} has {holds}; expected one folder per class "
                    f"({', '.join(all_classes) or 'the same in every domain'}) holding its images"
                )
        classes = classes_of[domain_dirs[0]]
        for name in domain_dirs[1:]:
            other = classes_of[name]
            if other != classes:
                raise UsageError(
                    f"domain folders disagree on classes: {data_root / domain_dirs[0]} has {', '.join(classes)} "
                    f"but {data_root / name} has {', '.join(other)}"
                )
        # SWAD names environments (and its table's columns) by their folders; ENVIRONMENTS keeps
        # DomainBed's short names
        self.environments = domain_dirs
        self.domain_dirs = domain_dirs
        self.classes = classes
        skip = hparams.get("skip_bad_images", False)
        self.datasets = [DomainFolder(data_root / name, classes, skip) for name in domain_dirs]
        self.skipped_images = [item for dataset in self.datasets for item in dataset.skipped]
        if self.skipped_images:
            first, reason = self.skipped_images[0]
            # the run's log is not ours to reach; stderr keeps the count visible beside it
            print(f"warning: skip_bad_images: skipped {len(self.skipped_images)} unreadable images "
                  f"(first: {reason})", file=sys.stderr)
            for env, dataset in zip(domain_dirs, self.datasets):
                if not len(dataset):
                    raise UsageError(f"domain folder {data_root / env} has no readable images")
        image_size = hparams["image_size"]
        self.input_shape = (3, image_size, image_size)
        self.num_classes = len(classes)
        mean, std = input_normalization(hparams)
        self.eval_transform = transforms.eval_transform(image_size, mean, std)
        self.train_transform = (
            transforms.train_transform(image_size, mean, std) if hparams["data_augmentation"] else self.eval_transform
        )


def _published(name: str, directory: str, domain_dirs: list, environments: list, **constants):
    """Register the published dataset `name`: its folder under --data_dir, its domain folders and
    DomainBed's short names for them (`ENVIRONMENTS`), and any other class constant."""
    attributes = {"DIRECTORY": directory, "DOMAIN_DIRS": domain_dirs, "ENVIRONMENTS": environments,
                  "__module__": __name__, "__qualname__": name, **constants}
    return register_dataset(name)(type(name, (MultipleEnvironmentImageFolder,), attributes))


PACS = _published("PACS", "PACS", ["art_painting", "cartoon", "photo", "sketch"], ["A", "C", "P", "S"])
VLCS = _published("VLCS", "VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], ["C", "L", "S", "V"])
OfficeHome = _published("OfficeHome", "office_home", ["Art", "Clipart", "Product", "Real World"],
                        ["A", "C", "P", "R"])
TerraIncognita = _published("TerraIncognita", "terra_incognita",
                            ["location_100", "location_38", "location_43", "location_46"],
                            ["L100", "L38", "L43", "L46"])
DomainNet = _published("DomainNet", "domain_net", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"],
                       ["clip", "info", "paint", "quick", "real", "sketch"], N_STEPS=15000, CHECKPOINT_FREQ=500)
# SVIRO's DomainBed subset: one domain per vehicle interior, named as its folders
_SVIRO_VEHICLES = ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"]
SVIRO = _published("SVIRO", "sviro", _SVIRO_VEHICLES, _SVIRO_VEHICLES)


@register_dataset("ImageFolder")
class ImageFolder(MultipleEnvironmentImageFolder):
    """Your own data: a folder whose sub-folders are the domains, given as --data_dir itself or as
    its parent (`dataset_folder`). Its folder's name titles the run's output and tables."""

    @classmethod
    def title(cls, registered_name: str, data_dir) -> str:
        return dataset_folder(Path(data_dir)).resolve().name


@run_settings
def _image_settings(hparam, dataset):
    hparam("skip_bad_images", False,
           help="drop images that cannot be decoded (counted) instead of stopping with an error")
