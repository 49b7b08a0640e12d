"""WILDS' Camelyon17 and FMoW as DomainBed's WILDSCamelyon and WILDSFMoW, read through the
`wilds` package (Koh et al., ICML 2021), as DomainBed reads them.

- WILDSCamelyon: DATA/camelyon17_v1.0, WILDS' release (metadata.csv, RELEASE_v1.0.txt and
  patches/patient_<p>_node_<n>/patch_patient_<p>_node_<n>_x_<x>_y_<y>.png, 96x96 patches of
  lymph-node sections). One environment per hospital (`center`): hospital_0 ... hospital_4;
  two classes, whether the patch's central 32x32 region holds tumour tissue.
- WILDSFMoW: DATA/fmow_v1.1 (rgb_metadata.csv, country_code_mapping.csv, RELEASE_v1.1.txt and
  images/rgb_img_<row>.png, 224x224 satellite images). One environment per region: region_0 ...
  region_5, WILDS' region numbers (regions numbered in the order the metadata first names them,
  countries without one being "Other"); 62 classes of land use.

As DomainBed, an environment is every image of its hospital or region, whatever WILDS' own split
(FMoW's `seq` images, which WILDS leaves out, are not read), and images are resized to the
backbone's input (`image_size`, DomainBed's 224 by default, so Camelyon's 96 px patches are scaled up).

Where we differ from DomainBed: its training transform resizes to 224 and then takes the random
crop; ours crops the image as read and resizes once (`transforms.train_transform`, every image
dataset's), the same crops with one interpolation fewer. A release whose hospitals or regions are
not DomainBed's five or six stops with an error, where DomainBed would number whatever it finds.

`samples(root)` lists every image of a release with its environment from the metadata alone
(no `wilds`, no pandas), for the downloader's `--verify`.
"""

import csv
import warnings
from pathlib import Path

import torch.utils.data
from PIL import Image

from domainbed.datasets import transforms
from domainbed.datasets.base import MultipleDomainDataset
from domainbed.datasets.image_folder import to_rgb
from domainbed.datasets.registry import register_dataset
from domainbed.errors import UsageError


class WildsEnvironment(torch.utils.data.Dataset):
    """The images of one hospital or region: `indices` into the WILDS dataset."""

    def __init__(self, dataset, indices, name: str):
        self.dataset, self.indices, self.name = dataset, indices, name

    def __getitem__(self, i):
        index = self.indices[i]
        try:
            image = self.dataset.get_input(index)
        except OSError as error:
            raise UsageError(f"cannot read image {index} of {self.name}: {error}") from None
        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        return to_rgb(image), int(self.dataset.y_array[index])

    def __len__(self):
        return len(self.indices)


class WildsDataset(MultipleDomainDataset):
    DIRECTORY = None  # the release's folder under DATA, as `wilds` names it
    METADATA_FIELD = None  # the WILDS metadata field whose values are the environments
    DOWNLOAD_NAME = None  # the downloader's name for the dataset
    N_WORKERS = 8

    @classmethod
    def load_wilds(cls, root):
        raise NotImplementedError

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        directory = Path(root) / self.DIRECTORY
        fetch = f"python -m domainbed.scripts.download --data_dir DIR --datasets {self.DOWNLOAD_NAME}"
        if not directory.is_dir():
            raise UsageError(f"data directory {directory} does not exist; pass --data_dir with the folder that "
                             f"contains {self.DIRECTORY} ({fetch} fetches it)")
        try:
            with warnings.catch_warnings():
                # about WILDS' own evaluation groupers and metadata tensors, which the environments never use
                warnings.filterwarnings("ignore", category=UserWarning, module=r"wilds\.")
                dataset = self.load_wilds(root)
        except (FileNotFoundError, KeyError, ValueError) as error:
            raise UsageError(f"{directory} is not a whole WILDS release ({type(error).__name__}: {error}); "
                             f"{fetch} --verify names what is missing") from None
        column = dataset.metadata_array[:, dataset.metadata_fields.index(self.METADATA_FIELD)]
        values = sorted(set(column.tolist()))
        found = [f"{self.METADATA_FIELD}_{value}" for value in values]
        if found != self.ENVIRONMENTS:
            raise UsageError(f"{directory} has the environments {', '.join(found)}; {type(self).__name__} has "
                             f"DomainBed's {', '.join(self.ENVIRONMENTS)}")
        self.datasets = [WildsEnvironment(dataset, (column == value).nonzero().flatten().tolist(), name)
                         for value, name in zip(values, found)]
        image_size = hparams["image_size"]
        self.input_shape = (3, image_size, image_size)
        self.eval_transform = transforms.eval_transform(image_size)
        self.train_transform = transforms.train_transform(image_size) if hparams["data_augmentation"] \
            else self.eval_transform


@register_dataset("WILDSCamelyon")
class WILDSCamelyon(WildsDataset):
    DIRECTORY = "camelyon17_v1.0"
    RELEASE = "RELEASE_v1.0.txt"
    METADATA = "metadata.csv"
    METADATA_FIELD = "hospital"
    DOWNLOAD_NAME = "WILDSCamelyon"
    ENVIRONMENTS = ["hospital_0", "hospital_1", "hospital_2", "hospital_3", "hospital_4"]
    num_classes = 2
    classes = ["normal", "tumor"]

    @classmethod
    def load_wilds(cls, root):
        from wilds.datasets.camelyon17_dataset import Camelyon17Dataset

        return Camelyon17Dataset(root_dir=str(root), download=False)


@register_dataset("WILDSFMoW")
class WILDSFMoW(WildsDataset):
    DIRECTORY = "fmow_v1.1"
    RELEASE = "RELEASE_v1.1.txt"
    METADATA = "rgb_metadata.csv"
    COUNTRIES = "country_code_mapping.csv"
    METADATA_FIELD = "region"
    DOWNLOAD_NAME = "WILDSFMoW"
    ENVIRONMENTS = ["region_0", "region_1", "region_2", "region_3", "region_4", "region_5"]
    num_classes = 62

    @classmethod
    def load_wilds(cls, root):
        from wilds.datasets.fmow_dataset import FMoWDataset

        return FMoWDataset(root_dir=str(root), download=False)

    def __init__(self, root, test_envs, hparams):
        from wilds.datasets.fmow_dataset import categories

        super().__init__(root, test_envs, hparams)
        self.classes = list(categories)


def _rows(path: Path, columns) -> list:
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in columns if column not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{path} lacks the columns {', '.join(missing)}")
        return list(reader)


def camelyon_samples(root) -> list:
    """[(hospital, image path relative to `root`)] of every patch metadata.csv names."""
    rows = _rows(Path(root) / WILDSCamelyon.METADATA, ("patient", "node", "x_coord", "y_coord", "center"))
    samples = []
    for row in rows:
        patient, node = row["patient"], row["node"]
        samples.append((int(row["center"]), f"patches/patient_{patient}_node_{node}/patch_patient_{patient}_node_{node}"
                                            f"_x_{row['x_coord']}_y_{row['y_coord']}.png"))
    return samples


def fmow_samples(root) -> list:
    """[(region, image path relative to `root`)] of every image rgb_metadata.csv names outside
    the `seq` split; regions numbered as WILDS numbers them (first appearance, seq rows included)."""
    root = Path(root)
    countries = _rows(root / WILDSFMoW.COUNTRIES, ("alpha-3", "region"))
    region_of = {row["alpha-3"]: row["region"] for row in countries}
    rows = _rows(root / WILDSFMoW.METADATA, ("split", "country_code"))
    regions = [region_of.get(row["country_code"], "Other") for row in rows]
    number = {region: i for i, region in enumerate(dict.fromkeys(regions))}
    return [(number[region], f"images/rgb_img_{i}.png") for i, (row, region) in enumerate(zip(rows, regions))
            if row["split"] != "seq"]
