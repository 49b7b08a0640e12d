"""Train one algorithm on every leave-one-domain-out fold of a dataset and print the table.

    python train_all.py NAME [extra.yaml ...] --dataset PACS --data_dir DATA --algorithm ERM \
        [--steps N --checkpoint_freq K ...] [--any_hparam value ...] [--resume [RUN_DIR]]

The published command lines call this file; the command line lives in domainbed/scripts/train_all.py
(also installed as `domainbed-train`), the experiment in domainbed/training/experiment.py.
"""

import os
import sys

from domainbed.scripts.train_all import main, make_parser, run, split_argv

__all__ = ["main", "make_parser", "run", "split_argv"]

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
