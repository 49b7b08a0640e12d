"""One entry for every speed measurement: `python -m domainbed.scripts.benchmark SUBCOMMAND ...`.

Subcommands (each module's docstring says what it measures and how):
    training   training and evaluation img/s of an input pipeline and precision against the
               classic fp32 path (the default: without a subcommand the arguments are its own)
    augment    per-sample batched augmentation, ours against torchvision v2 (and kornia)
    averaging  weight averaging's cost per step and per checkpoint
    gradient   step time of SAM, GSAM, SAGM_DG and GradSurgery relative to ERM
    masking    step time of RSC, DMG and MultiHead relative to ERM
    quant      QT-DoG's fake-quantization overhead
    search     ASHA against DomainBed's random search at the same training steps (accuracy, not speed)

Timing, round-robin medians and model building are shared (domainbed/scripts/timing.py).
"""

import argparse
import sys

from domainbed.errors import UsageError
from domainbed.scripts.benchmark import augment, averaging, gradient, masking, quant, search, training
from domainbed.scripts.benchmark.training import run, table  # noqa: F401  (the default subcommand's API)

SUBCOMMANDS = {"training": training, "augment": augment, "averaging": averaging, "gradient": gradient,
               "masking": masking, "quant": quant, "search": search}
DEFAULT = "training"
EXAMPLE = """examples:
  python -m domainbed.scripts.benchmark --dataset PACS --data_dir DATA --algorithm ERM SAGM_DG --precision bf16
  python -m domainbed.scripts.benchmark quant --backbone resnet50 --image_size 224
  python -m domainbed.scripts.benchmark gradient --help
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m domainbed.scripts.benchmark",
                                     description=__doc__.split("\n\n")[0], epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, module in SUBCOMMANDS.items():
        summary = module.__doc__.split("\n\n")[0]
        sub = commands.add_parser(name, help=summary, description=module.__doc__, allow_abbrev=False,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
    return parser


def parse_args(argv=None):
    """The subcommand's arguments; without a subcommand, the default one's (as before the merge)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = [DEFAULT, *argv]
    return make_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        print(SUBCOMMANDS[args.command].main(args), flush=True)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
