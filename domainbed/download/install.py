"""Installing one dataset so that DATA/<folder> is only ever absent, as it was, or complete.

The order: skip a folder that is already complete; fetch every file and check it against the
sources table; build the folder inside a staging directory next to it (same file system, so the
last step is one atomic rename); check the built folder; move an old incomplete folder aside
(renamed, never deleted); rename the new one in; record what was used in
DATA/.downloads/<dataset>.json. A crash at any point leaves at most a hidden staging directory,
which the next run removes, and partial downloads, which the next run resumes.
"""

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from domainbed import misc
from domainbed.download.errors import CorruptArchiveError, InstallError, UnsafeArchiveError
from domainbed.download.fetch import FetchOptions, check_file, obtain
from domainbed.download.spec import Dataset
from domainbed.download.verify import Report, check

CACHE = ".downloads"
STAGING = ".staging-"


@dataclass
class Outcome:
    dataset: str
    status: str
    message: str
    report: Optional[Report] = None

    @property
    def ok(self) -> bool:
        return self.status != "failed" and self.report is not None and self.report.complete


def install(dataset: Dataset, data_dir, *, mirror: Optional[str] = None, options: FetchOptions = FetchOptions(),
            keep_archives: bool = False, log: Callable[[str], None] = print) -> Outcome:
    """Install `dataset` under `data_dir`; a failure is an Outcome, not an exception, so one
    dead link does not stop the other datasets."""
    data_dir = Path(data_dir)
    target = data_dir / dataset.layout.directory
    record = data_dir / CACHE / f"{dataset.name}.json"
    if target.exists():
        report = check(dataset.name, dataset.layout, target, full=False)
        shrunk = _size_difference(target, _recorded(record, "bytes"))
        if report.complete and not shrunk:
            return Outcome(dataset.name, "skipped", f"skipped, {target} is already complete", report)
        if report.counts == _recorded(record, "counts") and not shrunk:
            return Outcome(dataset.name, "skipped", f"skipped, {target} was installed by an earlier run; it "
                                                     "differs from the published counts (see the table)", report)
        reason = shrunk or (report.problems[0] if report.problems else "not a folder")
        log(f"{dataset.name}: {target} is incomplete ({reason}); installing a fresh copy")
    try:
        return _install(dataset, data_dir, target, record, mirror, options, keep_archives, log)
    finally:
        _remove_if_empty(data_dir / CACHE)


def _install(dataset, data_dir, target, record, mirror, options, keep_archives, log) -> Outcome:
    try:
        fetched = _fetch_all(dataset, data_dir / CACHE, mirror, options, log)
    except InstallError as error:
        return Outcome(dataset.name, "failed", f"failed: {error}")
    try:
        report = _build_and_swap(dataset, data_dir, {name: item.path for name, (item, _) in fetched.items()}, log)
    except CorruptArchiveError as error:
        return Outcome(dataset.name, "failed", f"failed: {_forget_corrupt(error, fetched)}")
    except InstallError as error:
        return Outcome(dataset.name, "failed", f"failed: {error}")
    misc.atomic_write_text(record, misc.to_json({
        "dataset": dataset.name,
        "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: {"origin": item.origin, "sha256": sha256} for name, (item, sha256) in fetched.items()},
        "counts": report.counts,
        "bytes": _folder_bytes(target),
    }, indent=2))
    if not keep_archives:
        for item, _ in fetched.values():
            if item.owned:
                item.path.unlink(missing_ok=True)
    message = f"installed {target}" + ("" if report.complete else "; it differs from the published counts")
    return Outcome(dataset.name, "installed", message, report)


def _fetch_all(dataset: Dataset, cache: Path, mirror, options: FetchOptions, log) -> dict:
    """Every source file, checked; tries them all before failing, so that one message names
    every file that is missing (offline, each fails at once)."""
    fetched, failures = {}, {}
    for source in dataset.sources:
        log(f"{dataset.name}: fetching {source.filename}")
        try:
            item = obtain(source, cache, mirror, options)
            sha256 = check_file(item, source)
        except InstallError as error:
            failures[source.filename] = str(error)
            continue
        if source.checksum is None:
            log(f"{dataset.name}: sha256 {sha256}  {source.filename} (no published checksum to compare with)")
        fetched[source.filename] = (item, sha256)
    if len(failures) == 1:
        raise InstallError(next(iter(failures.values())))
    if failures:
        first = next(iter(failures.values()))
        raise InstallError(f"{len(failures)} files could not be fetched: {', '.join(failures)} (first: {first})")
    return fetched


def _build_and_swap(dataset: Dataset, data_dir: Path, archives: dict, log) -> Report:
    directory = dataset.layout.directory
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob(f".{directory}{STAGING}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory}{STAGING}", dir=data_dir))
    try:
        log(f"{dataset.name}: building in {staging}")
        tree = dataset.build(archives, staging)
        _refuse_links_out(tree)
        report = check(dataset.name, dataset.layout, tree, full=False)
        if report.layout_problems:
            raise InstallError(f"the built {dataset.name} folder is not what the loader reads "
                               f"({report.layout_problems[0]}); nothing was installed")
        target = data_dir / directory
        if target.exists():
            aside = data_dir / f"{directory}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(target, aside)
            log(f"{dataset.name}: moved the incomplete {target} aside to {aside} (delete it when you wish)")
        os.rename(tree, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.directory = target
    return report


def _forget_corrupt(error: CorruptArchiveError, fetched: dict) -> str:
    """Delete a corrupt archive we downloaded, so the next run fetches it anew; never the user's."""
    for item, _ in fetched.values():
        if item.path == error.path and item.owned:
            item.path.unlink(missing_ok=True)
            return f"{error} (deleted this download; run again to fetch it anew)"
    return f"{error} (left it untouched; replace it with a good copy)"


def _recorded(record: Path, key: str) -> Optional[dict]:
    try:
        return json.loads(record.read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError):
        return None


def _folder_bytes(target: Path) -> dict:
    """Bytes per top-level folder (domain): a file truncated after the install changes them."""
    return {entry.name: sum(path.stat().st_size for path in entry.rglob("*") if path.is_file())
            for entry in sorted(target.iterdir()) if entry.is_dir()}


def _size_difference(target: Path, recorded: Optional[dict]) -> Optional[str]:
    """What differs from the sizes an earlier install recorded, or None (also when none were)."""
    if not recorded or not target.is_dir():
        return None
    found = _folder_bytes(target)
    for name, size in recorded.items():
        if found.get(name) != size:
            return f"{target / name} holds {found.get(name, 0)} bytes, {size} when installed: files truncated or lost"
    return None


def _refuse_links_out(tree: Path) -> None:
    """A symbolic link that resolves outside the dataset folder would make the loader read (or a
    later install overwrite) files that are not the dataset's: nothing is installed."""
    root = tree.resolve()
    for path in tree.rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise UnsafeArchiveError(f"refused {path.relative_to(tree)}: a symbolic link to {os.readlink(path)}, "
                                     "outside the dataset folder; nothing was installed")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # absent, or holds downloads or records
