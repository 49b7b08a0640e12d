"""Shared fixtures: the repository root on sys.path (for train_all), and the real data."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(autouse=True)
def registries_as_they_were():
    """A test that names an outside method, dataset or backbone (`package.module:Class`, an entry
    point) registers it; the next test finds the registries as they were, in any order."""
    from domainbed import plugins
    from domainbed.algorithms.registry import _ALGORITHMS
    from domainbed.datasets.registry import _DATASETS
    from domainbed.networks.registry import _BACKBONES

    registries = (_ALGORITHMS, _DATASETS, _BACKBONES)
    saved, entry_points_loaded = [dict(registry.entries) for registry in registries], plugins._loaded
    yield
    for registry, entries in zip(registries, saved):
        registry.entries.clear()
        registry.entries.update(entries)
    plugins._loaded = entry_points_loaded


@pytest.fixture
def shared_data():
    """../shared/data, or a clean skip when this checkout has no real data beside it."""
    if not (SHARED_DATA / "PACS").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def mnist_data():
    if not (SHARED_DATA / "MNIST").is_dir():
        pytest.skip(f"MNIST not found at {SHARED_DATA / 'MNIST'}")
    return SHARED_DATA


@pytest.fixture
def run_train_all(tmp_path):
    """Call train_all.run(argv) with a private output directory; returns its result dict."""
    import train_all

    def run(*argv):
        return train_all.run([*map(str, argv), "--output_dir", str(tmp_path / "out")])

    return run


@pytest.fixture
def kill_subprocesses_at(monkeypatch):
    """`kill_subprocesses_at("step:2")`: every python process started afterwards by this test
    (train_all.py, sweep jobs) kills itself at that point (tests/kill_points.py);
    `kill_subprocesses_at(None)` stops it."""
    import kill_points

    def arm(spec):
        if spec is None:
            monkeypatch.delenv(kill_points.KILL_ENV, raising=False)
            return
        monkeypatch.setenv(kill_points.KILL_ENV, spec)
        path = os.environ.get("PYTHONPATH")
        faults = str(REPO / "tests" / "faults")
        if faults not in (path or "").split(os.pathsep):
            monkeypatch.setenv("PYTHONPATH", os.pathsep.join([faults, *([path] if path else [])]))

    return arm


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """Three domains x two classes of smooth random JPEGs of varied sizes, some larger than the
    training cache (37 px at 32) and not square."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for domain in ["dA", "dB", "dC"]:
        for label in ["cat", "dog"]:
            folder = root / domain / label
            folder.mkdir(parents=True)
            for i in range(6):
                h, w = rng.integers(20, 70, size=2)
                small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
                Image.fromarray(small).resize((int(w), int(h)), Image.BICUBIC).save(folder / f"{i}.jpg")
    return root
