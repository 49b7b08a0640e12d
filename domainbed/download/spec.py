"""The shapes of the facts in catalog.py: what to fetch, and what the finished folder must hold."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Union


@dataclass(frozen=True)
class Source:
    """One file to fetch. `urls` are tried in order; a "gdrive:<id>" URL goes through gdown.

    `size` (bytes) and `checksum` ("sha256:<hex>" or "md5:<hex>") are None where nothing was
    published; `provenance` says where the known values come from, or why they are unknown.
    `content_md5`, for a .gz file, is the md5 of its uncompressed bytes: a copy gzipped anew
    (other size and checksum, same content) is accepted by it, as `--verify` accepts it."""

    filename: str
    urls: tuple
    size: Optional[int]
    checksum: Optional[str]
    provenance: str
    content_md5: Optional[str] = None


@dataclass(frozen=True)
class ImageFolderLayout:
    """DATA/<directory>/<domain>/<class>/<image>, as domainbed.datasets.image_folder reads it.

    `classes` is the tuple of class folder names, or only how many there are where the names are
    not pinned here, or None where not even that is published; a domain's count is None where no
    count is published (its images are then counted, not compared); `class_counts` ({domain:
    {class: images}}) is known for some datasets only. A domain may be a nested path ("0/beach")
    where a dataset nests its domains one level deeper."""

    directory: str
    domain_counts: Mapping[str, int]
    classes: Union[tuple, int]
    class_counts: Optional[Mapping[str, Mapping[str, int]]] = None

    @classmethod
    def of(cls, dataset_class, domain_counts, classes, class_counts=None) -> "ImageFolderLayout":
        """The layout of a registered dataset class: its DIRECTORY and DOMAIN_DIRS, so the
        downloader and the loader cannot drift apart."""
        if list(domain_counts) != list(dataset_class.DOMAIN_DIRS):
            raise ValueError(
                f"{dataset_class.__name__}: published counts are for {list(domain_counts)}, "
                f"the loader reads {dataset_class.DOMAIN_DIRS}"
            )
        return cls(dataset_class.DIRECTORY, dict(domain_counts), classes, class_counts)


@dataclass(frozen=True)
class IdxFile:
    """One MNIST file: its name without .gz, how many items it holds, the md5 of its
    uncompressed bytes (so a re-gzipped copy still checks out)."""

    name: str
    items: int
    md5: str


@dataclass(frozen=True)
class IdxLayout:
    directory: str
    files: tuple


@dataclass(frozen=True)
class MetadataLayout:
    """DATA/<directory>: a release whose metadata table names every image and its environment
    (WILDS': `samples(folder)` lists [(environment index, image path relative to the folder)],
    domainbed/datasets/wilds_datasets.py), with `required` files beside it (the table, the
    release marker the `wilds` package checks for). `domain_counts` ({environment name: images},
    in index order) and `total` are None where nothing is published."""

    directory: str
    required: tuple
    domain_counts: Mapping[str, Optional[int]]
    total: Optional[int]
    samples: Callable[[Path], list]


Layout = Union[ImageFolderLayout, IdxLayout, MetadataLayout]


@dataclass(frozen=True)
class Dataset:
    """A dataset the downloader can install: `build(archives, work)` turns the fetched files
    ({filename: path}) into the finished folder somewhere under `work` and returns its path."""

    name: str
    layout: Layout
    sources: tuple
    build: Callable[[dict, Path], Path]
