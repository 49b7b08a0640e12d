"""From fetched files to the folder the dataset classes read, as DomainBed's download.py does it.

Every builder works inside `work` (a staging folder next to the data directory, removed by the
caller) and returns the finished dataset folder, which the caller checks and renames into place.
"""

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

from domainbed.download.errors import InstallError
from domainbed.download.extract import check_member_name, extract


def archive_root(archive: str, root: str):
    """The builder of a dataset that is one folder, `root`, inside one archive."""

    def build(archives: dict, work: Path) -> Path:
        extract(archives[archive], work / "extracted")
        tree = work / "extracted" / root
        if not tree.is_dir():
            raise InstallError(f"{archive} has no folder {root!r}; the archive is not the one expected")
        return tree

    return build


def archive_contents(archive: str, directory: str):
    """The builder of a dataset whose archive holds the folder's contents, not the folder (WILDS'
    releases: the `wilds` package extracts them into DATA/<directory>)."""

    def build(archives: dict, work: Path) -> Path:
        tree = work / directory
        extract(archives[archive], tree)
        nested = tree / directory
        return nested if nested.is_dir() and len(os.listdir(tree)) == 1 else tree

    return build


def domain_net(domain_archives, duplicates: str):
    """DomainNet: one zip per domain, extracted side by side, then the files DomainBed lists as
    duplicates removed (DomainBed ignores listed files that are absent, and so do we)."""

    def build(archives: dict, work: Path) -> Path:
        tree = work / "domain_net"
        for name in domain_archives:
            extract(archives[name], tree)
        listing = archives[duplicates]
        for line in listing.read_text(encoding="utf-8").splitlines():
            relative = line.strip()
            if relative:
                check_member_name(listing, relative)
                (tree / relative).unlink(missing_ok=True)
        return tree

    return build


def terra_incognita(images: str, annotations: str, images_root: str, annotation_files, locations, categories):
    """TerraIncognita: the camera-trap images of four locations, one folder per location and one
    sub-folder per animal category, from the CCT20 annotation files. DomainBed scans all
    annotations once per image (quadratic); an index by image id gives the same folders.
    Images are hard-linked from the extracted archive where the file system allows it."""

    def build(archives: dict, work: Path) -> Path:
        extract(archives[images], work / "images")
        extract(archives[annotations], work / "annotations")
        merged = defaultdict(list)
        for name in annotation_files:
            path = work / "annotations" / name
            if not path.is_file():
                raise InstallError(f"{annotations} has no {name}; the archive is not the one expected")
            for key, values in json.loads(path.read_text(encoding="utf-8")).items():
                if isinstance(values, list):
                    merged[key].extend(values)
        category_names = {item["id"]: item["name"] for item in merged["categories"]}
        by_image = defaultdict(list)
        for annotation in merged["annotations"]:
            by_image[annotation["image_id"]].append(category_names[annotation["category_id"]])
        source_dir = work / "images" / images_root
        tree = work / "terra_incognita"
        for image in merged["images"]:
            location = str(image["location"])
            if location not in locations:
                continue
            check_member_name(archives[annotations], image["file_name"])
            for category in by_image[image["id"]]:
                if category in categories:
                    _link_or_copy(source_dir / image["file_name"], tree / f"location_{location}" / category)
        return tree

    return build


def mnist(filenames):
    """MNIST: the gzipped IDX files as they come, in MNIST/raw (torchvision's layout)."""

    def build(archives: dict, work: Path) -> Path:
        raw = work / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in filenames:
            shutil.copyfile(archives[name], raw / name)
        return work / "MNIST"

    return build


def _link_or_copy(source: Path, folder: Path) -> None:
    target = folder / source.name
    if target.exists():
        return
    if not source.is_file():
        raise InstallError(f"{source.name} is annotated but missing from the image archive")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
