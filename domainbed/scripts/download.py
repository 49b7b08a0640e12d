"""Download, build and check the datasets, leaving DATA/<dataset> absent or complete, never half.

    python -m domainbed.scripts.download --data_dir DATA [--datasets PACS VLCS ...] [--mirror URL_OR_DIR]
    python -m domainbed.scripts.download --data_dir DATA --verify [--datasets ...]
    python -m domainbed.scripts.download --data_dir DATA --check_images [--datasets ... | ImageFolder]

Exit status: 0 when every dataset asked for is complete; 1 when one failed or differs from the
published counts; 2 for bad arguments. With --verify and no --datasets, datasets that are absent
are listed as absent but do not fail the run (a lab may use only PACS), unless none is present;
a dataset named with --datasets must be present and complete. --check_images only decodes every
image the loader would read, whatever the counts, prints every unreadable file on a line of its
own and exits 1 when there is one; `--datasets ImageFolder` checks DATA itself as a folder of
domains (train_all.py's --dataset ImageFolder).
"""

import argparse
import sys
from pathlib import Path

from domainbed import cli
from domainbed.download.catalog import ALIASES, DATASETS
from domainbed.download.fetch import FetchOptions, is_remote
from domainbed.download.install import install
from domainbed.download.spec import ImageFolderLayout, MetadataLayout
from domainbed.download.verify import check, decode_errors, metadata_images, render, unreadable_images
from domainbed.errors import UsageError, unknown_choice

IMAGE_FOLDER = "ImageFolder"  # any folder of domains, as train_all.py's --dataset ImageFolder reads it



def _aliases() -> str:
    """"RotatedMNIST, ColoredMNIST mean MNIST; ...": the dataset names that fetch another's folder."""
    targets = {}
    for alias, name in ALIASES.items():
        targets.setdefault(name, []).append(alias)
    return "; ".join(f"{', '.join(aliases)} mean {name}" for name, aliases in targets.items())

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m domainbed.scripts.download", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python -m domainbed.scripts.download --data_dir DATA --datasets PACS VLCS",
    )
    parser.add_argument("--data_dir", required=True, help="the folder that holds one sub-folder per dataset")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help=f"default: all of {', '.join(DATASETS)} ({_aliases()})")
    parser.add_argument("--mirror", metavar="URL_OR_DIR",
                        help="take every file from this folder or base URL, by its file name, instead of "
                             "the public sources")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true",
                      help="download nothing; check domains, classes and image counts against the "
                           "published ones and decode every image")
    mode.add_argument("--check_images", action="store_true",
                      help="download nothing; decode every image the loader would read and list every "
                           f"unreadable one (--datasets {IMAGE_FOLDER}: DATA itself is the folder of domains)")
    parser.add_argument("--keep_archives", action="store_true",
                        help="keep the downloaded archives in DATA/.downloads after a successful build")
    parser.add_argument("--timeout", type=float, default=FetchOptions.timeout,
                        help="seconds to wait for the next byte before an attempt is abandoned")
    parser.add_argument("--retries", type=int, default=FetchOptions.retries,
                        help="further attempts per URL after the first (each resumes the partial file)")
    return parser.parse_args(argv)


def dataset_names(requested, extra=()) -> list:
    """The catalog's names of `requested` (None: every dataset); `extra` names are also valid."""
    if requested is None:
        return list(DATASETS)
    names = []
    for name in requested:
        key = ALIASES.get(name, name)
        if key not in DATASETS and key not in extra:
            raise unknown_choice("dataset", name, [*DATASETS, *ALIASES, *extra])
        if key not in names:
            names.append(key)
    return names


def verify(data_dir: Path, names, explicit: bool) -> int:
    if not data_dir.is_dir():
        raise UsageError(f"--data_dir {data_dir} does not exist")
    reports = [check(name, DATASETS[name].layout, data_dir / DATASETS[name].layout.directory) for name in names]
    print(render(reports))
    present = [report for report in reports if not report.absent]
    failed = [report.dataset for report in reports if not report.complete and (explicit or not report.absent)]
    if failed:
        print(f"not complete: {', '.join(failed)}")
        return 1
    if not present:
        print(f"no dataset found in {data_dir}")
        return 1
    print(f"complete: {', '.join(report.dataset for report in present)}")
    return 0


def check_images(data_dir: Path, names, explicit: bool) -> int:
    """Decode every image of the image datasets in `names` (MNIST is checked by --verify); every
    unreadable file is a line of its own."""
    if not data_dir.is_dir():
        raise UsageError(f"--data_dir {data_dir} does not exist")
    checked, bad, absent = 0, 0, []
    for name in names:
        layout = DATASETS[name].layout if name in DATASETS else None
        if layout is not None and not isinstance(layout, (ImageFolderLayout, MetadataLayout)):
            continue
        directory = data_dir / layout.directory if layout is not None else data_dir
        if not directory.is_dir():
            absent.append(name)
            continue
        if isinstance(layout, MetadataLayout):
            paths = [path for _, path in metadata_images(layout, directory) if path.is_file()]
            count, errors = len(paths), list(decode_errors(paths, f"decoding {name}"))
        else:
            count, errors = unreadable_images(directory, name, list(layout.domain_counts) if layout else None)
        for _, error in errors:
            print(f"{name}: {error}", flush=True)
        print(f"{name}: {count} images, {len(errors)} unreadable", flush=True)
        checked, bad = checked + 1, bad + len(errors)
    if explicit and absent:
        print(f"absent: {', '.join(absent)} (no folder under {data_dir})")
        return 1
    if not checked:
        print(f"no image dataset found in {data_dir}")
        return 1
    return 1 if bad else 0


def download(args, data_dir: Path, names) -> int:
    if args.timeout <= 0 or args.retries < 0:
        raise UsageError(f"--timeout must be > 0 and --retries >= 0; got {args.timeout} and {args.retries}")
    if args.mirror and not is_remote(args.mirror) and not Path(args.mirror).is_dir():
        raise UsageError(f"--mirror {args.mirror} is neither an http(s) URL nor an existing folder")
    options = FetchOptions(timeout=args.timeout, retries=args.retries)
    outcomes = []
    for name in names:
        outcome = install(DATASETS[name], data_dir, mirror=args.mirror, options=options,
                          keep_archives=args.keep_archives, log=lambda line: print(line, flush=True))
        print(f"{name}: {outcome.message}", flush=True)
        outcomes.append(outcome)
    reports = [outcome.report for outcome in outcomes if outcome.report is not None]
    if reports:
        print(render(reports))
    failed = [outcome.dataset for outcome in outcomes if not outcome.ok]
    if failed:
        print(f"not complete: {', '.join(failed)}")
        return 1
    return 0


def run(argv=None) -> int:
    args = parse_args(argv)
    data_dir = Path(args.data_dir)
    if args.check_images:
        return check_images(data_dir, dataset_names(args.datasets, extra=[IMAGE_FOLDER]), args.datasets is not None)
    names = dataset_names(args.datasets)
    return verify(data_dir, names, args.datasets is not None) if args.verify else download(args, data_dir, names)


def main(argv=None) -> int:
    return cli.run_main(lambda: run(argv),
                        "interrupted: partial downloads stay in DATA/.downloads and resume on the next run")


if __name__ == "__main__":
    sys.exit(main())
