"""Download, build and check the datasets, leaving DATA/<dataset> absent or complete, never half.

    python -m domainbed.scripts.download --data_dir DATA [--datasets PACS VLCS ...] [--mirror URL_OR_DIR]
    python -m domainbed.scripts.download --data_dir DATA --verify [--datasets ...]

Exit status: 0 when every dataset asked for is complete; 1 when one failed or differs from the
published counts; 2 for bad arguments. With --verify and no --datasets, datasets that are absent
are listed as absent but do not fail the run (a lab may use only PACS), unless none is present;
a dataset named with --datasets must be present and complete.
"""

import argparse
import sys
from pathlib import Path

from domainbed import cli
from domainbed.download.catalog import ALIASES, DATASETS
from domainbed.download.fetch import FetchOptions, is_remote
from domainbed.download.install import install
from domainbed.download.verify import check, render
from domainbed.errors import UsageError, unknown_choice


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m domainbed.scripts.download", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python -m domainbed.scripts.download --data_dir DATA --datasets PACS VLCS",
    )
    parser.add_argument("--data_dir", required=True, help="the folder that holds one sub-folder per dataset")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help=f"default: all of {', '.join(DATASETS)} ({', '.join(ALIASES)} mean MNIST)")
    parser.add_argument("--mirror", metavar="URL_OR_DIR",
                        help="take every file from this folder or base URL, by its file name, instead of "
                             "the public sources")
    parser.add_argument("--verify", action="store_true",
                        help="download nothing; check domains, classes and image counts against the "
                             "published ones and decode every image")
    parser.add_argument("--keep_archives", action="store_true",
                        help="keep the downloaded archives in DATA/.downloads after a successful build")
    parser.add_argument("--timeout", type=float, default=FetchOptions.timeout,
                        help="seconds to wait for the next byte before an attempt is abandoned")
    parser.add_argument("--retries", type=int, default=FetchOptions.retries,
                        help="further attempts per URL after the first (each resumes the partial file)")
    return parser.parse_args(argv)


def dataset_names(requested) -> list:
    if requested is None:
        return list(DATASETS)
    names = []
    for name in requested:
        key = ALIASES.get(name, name)
        if key not in DATASETS:
            raise unknown_choice("dataset", name, [*DATASETS, *ALIASES])
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
    names = dataset_names(args.datasets)
    data_dir = Path(args.data_dir)
    return verify(data_dir, names, args.datasets is not None) if args.verify else download(args, data_dir, names)


def main(argv=None) -> int:
    return cli.run_main(lambda: run(argv),
                        "interrupted: partial downloads stay in DATA/.downloads and resume on the next run")


if __name__ == "__main__":
    sys.exit(main())
