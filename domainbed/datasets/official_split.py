"""PACS's official train / validation split (Li et al., "Deeper, Broader and Artier Domain
Generalization", ICCV 2017), as RSC's and DMG's papers train on it.

The lists are `{domain}_train_kfold.txt` and `{domain}_crossval_kfold.txt`, one
`domain/class/file label` line per image, label 1-based. Each listed path is matched to the item
of the environment's `DomainFolder` with the same relative path; the label is taken from the
folder, as for every other item, because the released art_painting_crossval list carries one
label 0 (`art_painting/dog/pic_225.jpg 0`, a dog, which is 1) that no reader should trust.
"""

from pathlib import Path

from domainbed.errors import UsageError

SPLITS = ("train", "crossval")


def list_path(split_dir, domain: str, split: str) -> Path:
    return Path(split_dir) / f"{domain}_{split}_kfold.txt"


def _listed_paths(path: Path) -> list:
    if not path.is_file():
        raise UsageError(f"official split list {path} does not exist; point --split_dir at the folder "
                         f"holding the PACS *_train_kfold.txt and *_crossval_kfold.txt lists")
    paths = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise UsageError(f"{path} line {number}: expected 'domain/class/file label', got {line.strip()!r}")
        paths.append(fields[0])
    return paths


def official_split(environment, domain: str, split_dir) -> tuple[list, list]:
    """(train indices, validation indices) of `environment` (a DomainFolder of the PACS folder
    `domain`), in the lists' order."""
    index_of = {Path(domain, *path.relative_to(environment.root).parts).as_posix(): index
                for index, (path, _) in enumerate(environment.samples)}
    indices = []
    for split in SPLITS:
        path = list_path(split_dir, domain, split)
        listed = _listed_paths(path)
        missing = [name for name in listed if name not in index_of]
        if missing:
            raise UsageError(f"{path} lists {len(missing)} images absent from {environment.root} "
                             f"(first: {missing[0]}); the split lists and the data must be the same PACS")
        indices.append([index_of[name] for name in listed])
    return indices[0], indices[1]
