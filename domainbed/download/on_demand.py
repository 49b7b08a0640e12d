"""`train_all.py --download`: fetch the dataset a run needs through the downloader, when missing.

The run then has what `python -m domainbed.scripts.download --datasets NAME` would have given it
(progress bars, checksums, an atomic install). Without a network the run stops before anything
exists, in one line that says how to bring the files by hand.
"""

from pathlib import Path
from typing import Callable

from domainbed.datasets import get_dataset_class
from domainbed.download.catalog import ALIASES, DATASETS
from domainbed.download.install import install
from domainbed.errors import UsageError


def fetch_if_missing(dataset: str, data_dir, log: Callable[[str], None] = print) -> None:
    """Install `dataset` (a registered dataset name) under `data_dir` unless it is complete there."""
    if get_dataset_class(dataset).GENERATED:
        return
    name = ALIASES.get(dataset, dataset)
    if name not in DATASETS:
        raise UsageError(f"--download: {dataset} is not a dataset the downloader knows; it fetches "
                         f"{', '.join([*DATASETS, *ALIASES])}. Your own folders need no --download")
    data_dir = Path(data_dir)
    outcome = install(DATASETS[name], data_dir, log=log)
    if outcome.ok or outcome.status == "skipped":
        if outcome.status == "installed":
            log(f"{name}: {outcome.message}")
        return
    offline = "offline?" in outcome.message or "could not reach" in outcome.message
    reason = "no network" if offline else outcome.message.removeprefix("failed: ")
    raise UsageError(
        f"--download could not fetch {name} into {data_dir} ({reason}); on a machine with a network run "
        f"`python -m domainbed.scripts.download --data_dir DIR --datasets {name}` and copy DIR/"
        f"{DATASETS[name].layout.directory} into {data_dir}, or put its files in a folder and add --mirror FOLDER "
        "to that command here")
