"""Kill points for processes a test does not start itself (`python train_all.py`, sweep jobs):
a test puts this folder first on PYTHONPATH and names the point in DOMAINBED_TEST_KILL_AT (see
the `kill_subprocesses_at` fixture in conftest.py); Python imports this module at start-up."""

import os
import sys
from pathlib import Path

if os.environ.get("DOMAINBED_TEST_KILL_AT"):
    tests = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(tests.parent), str(tests)]  # this checkout's domainbed, and kill_points
    import kill_points

    kill_points.install_from_environment()
