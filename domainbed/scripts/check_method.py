"""Run a method through the whole algorithm contract (domainbed/algorithms/contract.py) before
training it: its hparam declarations, one update, the state round trip, predict in eval mode, a
quantization swap, and bf16 and fp16 mixed precision, all on the CPU with a small network.

    python -m domainbed.scripts.check_method my_package.my_method:MyMethod [MoreMethods ...]

A method is a registered name (an installed package's entry point included) or a
`package.module:Class` on the python path. Exit status 0 when every method keeps the contract,
1 with one line per defect otherwise, 2 for a name that names no algorithm.
"""

import sys

from domainbed import cli
from domainbed.algorithms import get_algorithm_class
from domainbed.algorithms.contract import run_contract


def make_parser():
    parser = cli.parser(__doc__.split("\n\n")[0],
                        "PYTHONPATH=examples/domainbed-example-method python -m domainbed.scripts.check_method "
                        "domainbed_example.confidence_penalty:ConfidencePenalty")
    parser.add_argument("methods", nargs="+", metavar="method",
                        help="a registered algorithm name or package.module:Class")
    return parser


def run(argv) -> int:
    """Check every method named in `argv`; print the verdicts; 0 when all keep the contract."""
    names = make_parser().parse_args(argv).methods
    for name in names:
        get_algorithm_class(name)  # every name is valid before the first (slow) check starts
    broken = False
    for name in names:
        checked, defects = run_contract(name)
        for defect in defects:
            print(defect)
        if not defects:
            print(f"{name} keeps the contract: {', '.join(checked)}")
        broken = broken or bool(defects)
    return 1 if broken else 0


def main(argv=None) -> int:
    return cli.run_main(lambda: run(sys.argv[1:] if argv is None else argv), "interrupted")


if __name__ == "__main__":
    sys.exit(main())
