"""Checking a dataset folder against its published layout, the way the loader will read it.

Counted is what domainbed.datasets reads: non-hidden class folders, and in each the files with an
image extension. "extra" means something the loader would pick up that should not be there (an
unexpected domain or class folder, more images than published); other files it skips (a stray
Thumbs.db) are only mentioned. Where the published counts are per domain, a surplus and a
deficit within one domain can cancel; PACS has per-class counts and MNIST its md5s, so there
every difference shows. A full check also decodes every image with the loader's own reader;
`unreadable_images` does only that, for any folder of domains, and names every bad file.
"""

import gzip
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image
from prettytable import PrettyTable
from tqdm import tqdm

from domainbed.datasets.image_folder import IMAGE_EXTENSIONS, load_rgb
from domainbed.datasets.mnist import find_mnist_file, read_idx
from domainbed.download.fetch import file_digests
from domainbed.download.spec import IdxLayout, ImageFolderLayout, MetadataLayout
from domainbed.errors import UsageError

PROBLEMS_SHOWN = 10


@dataclass
class Row:
    domain: str
    expected: Optional[int]
    found: Optional[int]
    missing: int = 0
    extra: int = 0
    unreadable: int = 0

    @property
    def ok(self) -> bool:
        return self.found is not None and not (self.missing or self.extra or self.unreadable)


@dataclass
class Report:
    dataset: str
    directory: Path
    rows: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    layout_problems: list = field(default_factory=list)
    ignored: int = 0
    absent: bool = False

    def layout_problem(self, message: str) -> None:
        """A problem the loader would stop at (a missing or unexpected folder, an empty class)."""
        self.layout_problems.append(message)
        self.problems.append(message)

    @property
    def complete(self) -> bool:
        return not self.absent and not self.problems

    @property
    def status(self) -> str:
        return "absent" if self.absent else "complete" if self.complete else "incomplete"

    @property
    def counts(self) -> dict:
        return {row.domain: row.found for row in self.rows}


def check(name: str, layout, directory: Path, full: bool = True) -> Report:
    """The report on the dataset folder `directory`; `full` also decodes every image (MNIST,
    small, is always read whole)."""
    directory = Path(directory)
    report = Report(name, directory)
    if not directory.is_dir():
        report.absent = True
        expected = {f.name: f.items for f in layout.files} if isinstance(layout, IdxLayout) else layout.domain_counts
        report.rows = [Row(domain, count, None, missing=count or 0) for domain, count in expected.items()]
        return report
    if isinstance(layout, IdxLayout):
        _check_idx(layout, directory, report)
    elif isinstance(layout, MetadataLayout):
        _check_metadata(layout, directory, report, full)
    else:
        _check_image_folder(layout, directory, report, full)
    return report


def _subfolders(path: Path) -> list:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images(folder: Path) -> tuple:
    """(image files, number of other files) directly in `folder`, as DomainFolder lists them."""
    files = [e for e in os.scandir(folder) if e.is_file()]
    images = sorted(Path(e.path) for e in files if e.name.lower().endswith(IMAGE_EXTENSIONS))
    return images, len(files) - len(images)


def _check_image_folder(layout: ImageFolderLayout, root: Path, report: Report, full: bool) -> None:
    problems = report.problems
    top_folders = {domain.split("/")[0] for domain in layout.domain_counts}
    for name in _subfolders(root):
        if name not in top_folders:
            report.layout_problem(f"{root / name}: unexpected folder (not a domain of {report.dataset})")
    reference = layout.classes if isinstance(layout.classes, tuple) else None
    to_decode = []
    for domain, expected in layout.domain_counts.items():
        path = root / domain
        if not path.is_dir():
            report.layout_problem(f"{path}: domain folder missing")
            report.rows.append(Row(domain, expected, None, missing=expected or 0))
            continue
        classes = _subfolders(path)
        if reference is None:
            reference = tuple(classes)
            if layout.classes is not None and len(classes) != layout.classes:
                report.layout_problem(f"{path}: {len(classes)} class folders, published: {layout.classes}")
        for name in sorted(set(reference) - set(classes)):
            report.layout_problem(f"{path / name}: class folder missing")
        for name in sorted(set(classes) - set(reference)):
            report.layout_problem(f"{path / name}: unexpected class folder (the loader would read it as a class)")
        row = Row(domain, expected, 0)
        per_class = (layout.class_counts or {}).get(domain, {})
        for name in sorted(set(classes) | set(per_class)):
            images, others = _images(path / name) if name in classes else ([], 0)
            report.ignored += others
            row.found += len(images)
            to_decode.extend((row, image) for image in images)
            if name in classes and not images:
                report.layout_problem(f"{path / name}: no images (the loader refuses an empty class)")
            if name in per_class and len(images) != per_class[name]:
                _count_difference(row, problems, path / name, len(images), per_class[name])
        if not per_class and expected is not None and row.found != expected:
            _count_difference(row, problems, path, row.found, expected)
        report.rows.append(row)
    if full and to_decode:
        _decode_all(to_decode, report)


def metadata_images(layout: MetadataLayout, root: Path) -> list:
    """[(environment index, image path)] of every image the metadata of the release at `root` names."""
    return [(environment, root / relative) for environment, relative in layout.samples(root)]


def _check_metadata(layout: MetadataLayout, root: Path, report: Report, full: bool) -> None:
    """A WILDS release: its required files, then every image its metadata names, per environment."""
    for name in layout.required:
        if not (root / name).is_file():
            report.layout_problem(f"{root / name}: missing")
    names = list(layout.domain_counts)
    try:
        samples = metadata_images(layout, root)
    except UsageError as error:
        report.layout_problem(str(error))
        samples = []
    outside = sorted({environment for environment, _ in samples if not 0 <= environment < len(names)})
    if outside:
        report.layout_problem(f"{root}: the metadata names {len(names) + len(outside)} or more environments, "
                              f"published: {len(names)} ({', '.join(names)})")
    rows = [Row(name, expected, 0) for name, expected in layout.domain_counts.items()]
    to_decode = []
    for environment, path in samples:
        if environment in outside:
            continue
        row = rows[environment]
        if path.is_file():
            row.found += 1
            to_decode.append((row, path))
        else:
            row.missing += 1
            report.problems.append(f"{path}: missing (named by the metadata)")
    for row in rows:
        if row.expected is not None and row.found + row.missing != row.expected:
            _count_difference(row, report.problems, root / row.domain, row.found + row.missing, row.expected)
    if layout.total is not None and len(samples) != layout.total and not report.layout_problems:
        report.problems.append(f"{root}: the metadata names {len(samples)} images, published {layout.total}")
    report.rows = rows
    if full and to_decode:
        _decode_all(to_decode, report)


def _count_difference(row: Row, problems: list, path: Path, found: int, expected: int) -> None:
    row.missing += max(expected - found, 0)
    row.extra += max(found - expected, 0)
    word = "missing" if found < expected else "extra"
    problems.append(f"{path}: {found} images, published {expected} ({abs(found - expected)} {word})")


def _image_error(path: Path) -> Optional[str]:
    try:
        with Image.open(path) as image:
            image.verify()
        load_rgb(path)
    except UsageError as error:
        return str(error)
    except (OSError, SyntaxError, ValueError) as error:
        return f"cannot read image {path}: {error}"
    return None


def decode_errors(paths: list, desc: str):
    """Yield (path, error line) for every one of `paths` that does not decode. Decoding runs on a
    few threads (Pillow releases the GIL while decoding), in batches so that DomainNet's 586k
    images never wait as futures all at once, under a progress bar."""
    workers = min(8, 2 * (os.cpu_count() or 1))
    batch = 4096
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), unit="img", disable=None, desc=desc) as bar:
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            for path, error in zip(chunk, pool.map(_image_error, chunk)):
                if error:
                    yield path, error
            bar.update(len(chunk))


def _decode_all(to_decode: list, report: Report) -> None:
    row_of = {path: row for row, path in to_decode}
    for path, error in decode_errors([path for _, path in to_decode], f"decoding {report.dataset}"):
        row_of[path].unreadable += 1
        report.problems.append(error)


def image_files(root: Path, domains=None) -> list:
    """Every file the loader reads under `root`: <domain>/<class>/<image>, non-hidden folders, files
    with an image extension; `domains` (nested paths allowed) where the layout names them, else
    every sub-folder."""
    domains = _subfolders(root) if domains is None else [d for d in domains if (root / d).is_dir()]
    return [image for domain in domains for name in _subfolders(root / domain)
            for image in _images(root / domain / name)[0]]


def unreadable_images(root: Path, name: str, domains=None) -> tuple:
    """(number of images, [(path, error line)] of those that do not decode) under the folder of
    domains `root` (its `domains`, when given)."""
    paths = image_files(root, domains)
    return len(paths), list(decode_errors(paths, f"decoding {name}"))


def _check_idx(layout: IdxLayout, root: Path, report: Report) -> None:
    for spec in layout.files:
        row = Row(spec.name, spec.items, None)
        report.rows.append(row)
        try:
            path = find_mnist_file(root.parent, spec.name)
        except UsageError:
            row.missing = spec.items
            report.layout_problem(f"{root / 'raw' / spec.name}(.gz): missing")
            continue
        try:
            row.found = len(read_idx(path))
        except UsageError as error:
            row.unreadable = 1
            report.layout_problem(str(error))
            continue
        if row.found != spec.items:
            _count_difference(row, report.problems, path, row.found, spec.items)
        content_md5 = _uncompressed_md5(path)
        if content_md5 != spec.md5:
            row.unreadable = 1
            report.problems.append(f"{path}: uncompressed md5 {content_md5}, published {spec.md5}")


def _uncompressed_md5(path: Path) -> str:
    if path.suffix != ".gz":
        return file_digests(path, {"md5"})["md5"]
    digest = hashlib.md5()
    with gzip.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render(reports) -> str:
    """One short table for all datasets, then each dataset's first problems, one per line."""
    table = PrettyTable(["dataset", "domain", "expected", "found", "missing", "extra", "unreadable", "status"])
    table.align["domain"] = "l"
    for report in reports:
        if report.absent:
            table.add_row([report.dataset, "-", _total(r.expected for r in report.rows), "-", "-", "-", "-", "absent"])
            continue
        for row in report.rows:
            table.add_row([report.dataset, row.domain, _show(row.expected), _show(row.found), row.missing,
                           row.extra, row.unreadable, "ok" if row.ok else "FAIL"])
        table.add_row([report.dataset, "(all)", _total(r.expected for r in report.rows),
                       _total(r.found for r in report.rows), sum(r.missing for r in report.rows),
                       sum(r.extra for r in report.rows), sum(r.unreadable for r in report.rows),
                       report.status], divider=True)
    lines = [table.get_string()]
    for report in reports:
        for problem in report.problems[:PROBLEMS_SHOWN]:
            lines.append(f"{report.dataset}: {problem}")
        if len(report.problems) > PROBLEMS_SHOWN:
            lines.append(f"{report.dataset}: ... and {len(report.problems) - PROBLEMS_SHOWN} more problems")
        if report.ignored:
            lines.append(f"{report.dataset}: {report.ignored} files that are not images (the loader skips them)")
    return "\n".join(lines)


def _show(value) -> str:
    return "-" if value is None else str(value)


def _total(values) -> str:
    known = [v for v in values if v is not None]
    return str(sum(known)) if known else "-"
