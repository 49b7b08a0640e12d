"""Spawrious (Lynch et al., 2023, arXiv:2303.05470): four dog breeds photographed (generated) in
six locations, where the training environments tie each breed to a location and the test
environment breaks the tie. DomainBed's six challenges, with its environments and classes.

The archive holds DATA/spawrious224/<set>/<location>/<breed>/<image>, two image sets ("0", "1")
of every location and breed. Every challenge has DomainBed's three environments:

- "Test": the breeds in the locations the training environments never pair them with, all images;
- "SC_group_1", "SC_group_2": the spuriously correlated training environments.

One-to-one (O2O): each breed has its own location; environment e (image set e) draws 97% (e=0) or
87% (e=1) of 3168 images per breed from that location and the rest from a shared filler location.
Many-to-many (M2M): two groups of two breeds swap two locations between the environments, 3168
images each, all from image set 0.

Where we differ from DomainBed: it reads `--data_dir` itself as the spawrious224 folder; we read
DATA/spawrious224, as every other dataset reads its folder under DATA. It keeps the first images
of a folder in the order the file system lists them; we sort the names first, so every machine
keeps the same images.
"""

import os
from pathlib import Path

import torch.utils.data

from domainbed.datasets import transforms
from domainbed.datasets.base import MultipleDomainDataset
from domainbed.datasets.image_folder import load_rgb
from domainbed.datasets.registry import register_dataset
from domainbed.errors import UsageError

DIRECTORY = "spawrious224"
BREEDS = ("bulldog", "corgi", "dachshund", "labrador")  # label order: sorted, as DomainBed's class_list
LOCATIONS = ("beach", "desert", "dirt", "jungle", "mountain", "snow")
IMAGE_SETS = ("0", "1")
PER_BREED = 3168  # images of one breed in one training environment
O2O_SHARES = (0.97, 0.87)  # of PER_BREED from the breed's own location, per training environment
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # what DomainBed's Spawrious reader takes
_ORDER = ("bulldog", "dachshund", "labrador", "corgi")  # DomainBed's order of the breeds in an environment


class Picks(torch.utils.data.Dataset):
    """One environment: the images of each pick (image set, location, breed, at most `limit`)."""

    def __init__(self, root: Path, picks):
        self.samples = []
        for image_set, location, breed, limit in picks:
            folder = root / image_set / location / breed
            if not folder.is_dir():
                raise UsageError(f"Spawrious folder {folder} does not exist; expected {root}/<{'|'.join(IMAGE_SETS)}>/"
                                 f"<location>/<breed>/ (python -m domainbed.scripts.download --datasets Spawrious)")
            names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
            if not names:
                raise UsageError(f"Spawrious folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            label = BREEDS.index(breed)
            self.samples.extend((folder / name, label) for name in names[:limit])
        self.targets = [label for _, label in self.samples]

    def __getitem__(self, index):
        path, label = self.samples[index]
        return load_rgb(path), label

    def __len__(self):
        return len(self.samples)


def one_to_one(spurious: dict, test: dict, filler: str) -> list:
    """The picks of the Test, SC_group_1 and SC_group_2 environments of an O2O challenge."""
    environments = [[(image_set, test[breed], breed, None) for image_set in IMAGE_SETS for breed in _ORDER]]
    for image_set, share in zip(IMAGE_SETS, O2O_SHARES):
        own = int(share * PER_BREED)
        environments.append([(image_set, spurious[breed], breed, own) for breed in _ORDER]
                            + [(image_set, filler, breed, PER_BREED - own) for breed in _ORDER])
    return environments


def many_to_many(spurious: tuple, test: tuple) -> list:
    """The picks of an M2M challenge: `spurious` and `test` give each breed's location in the two
    training environments and in the two halves of the test environment."""
    environments = [[("0", half[breed], breed, None) for half in test for breed in _ORDER]]
    environments += [[("0", locations[breed], breed, PER_BREED) for breed in _ORDER] for locations in spurious]
    return environments


class Spawrious(MultipleDomainDataset):
    ENVIRONMENTS = ["Test", "SC_group_1", "SC_group_2"]
    DIRECTORY = DIRECTORY
    N_WORKERS = 8
    num_classes = len(BREEDS)
    PICKS = None  # [environment: [(image set, location, breed, limit)]]

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        data_root = Path(root) / DIRECTORY
        if not data_root.is_dir():
            raise UsageError(f"data directory {data_root} does not exist; pass --data_dir with the folder that "
                             f"contains {DIRECTORY} (python -m domainbed.scripts.download --data_dir DIR "
                             "--datasets Spawrious fetches it)")
        self.classes = list(BREEDS)
        self.datasets = [Picks(data_root, picks) for picks in self.PICKS]
        image_size = hparams["image_size"]
        self.input_shape = (3, image_size, image_size)
        self.eval_transform = transforms.eval_transform(image_size)
        self.train_transform = (transforms.train_transform_without_crop(image_size)
                                if hparams["data_augmentation"] else self.eval_transform)


def _challenge(name: str, picks: list):
    attributes = {"PICKS": picks, "__module__": __name__, "__qualname__": name}
    return register_dataset(name)(type(name, (Spawrious,), attributes))


def _breeds(*locations) -> dict:
    """{breed: location}, the locations given in DomainBed's order of the breeds."""
    return dict(zip(_ORDER, locations))


SpawriousO2O_easy = _challenge("SpawriousO2O_easy", one_to_one(
    _breeds("desert", "jungle", "dirt", "snow"), _breeds("dirt", "snow", "desert", "jungle"), "beach"))
SpawriousO2O_medium = _challenge("SpawriousO2O_medium", one_to_one(
    _breeds("mountain", "beach", "dirt", "jungle"), _breeds("jungle", "dirt", "beach", "snow"), "desert"))
SpawriousO2O_hard = _challenge("SpawriousO2O_hard", one_to_one(
    _breeds("jungle", "mountain", "snow", "desert"), _breeds("mountain", "snow", "desert", "jungle"), "beach"))


def _m2m(group, test):
    """DomainBed's M2M from its four locations: the first two breeds swap group[0] and group[1]
    between the environments, the other two group[2] and group[3]; the test likewise."""
    def swapped(a, b, c, d):
        return _breeds(a, b, c, d), _breeds(b, a, d, c)
    return many_to_many(swapped(*group), swapped(*test))


SpawriousM2M_easy = _challenge("SpawriousM2M_easy", _m2m(
    ("desert", "mountain", "dirt", "jungle"), ("dirt", "jungle", "mountain", "desert")))
SpawriousM2M_medium = _challenge("SpawriousM2M_medium", _m2m(
    ("beach", "snow", "mountain", "desert"), ("desert", "mountain", "beach", "snow")))
SpawriousM2M_hard = _challenge("SpawriousM2M_hard", _m2m(
    ("dirt", "jungle", "snow", "beach"), ("snow", "beach", "dirt", "jungle")))
