"""The README's first-minute demo: `--download` fetches the dataset through the downloader (or
says in one line what to do offline), and `examples_per_domain` keeps a seeded sample of each
domain before DomainBed's split."""

import dataclasses
import functools
import http.server
import re
import shlex
import socket
import threading
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import train_all
from domainbed.download import catalog
from domainbed.download.spec import Dataset
from domainbed.training.fold_splits import make_splits

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_demo_line() -> list:
    """The first-minute command of README.md, as tokens."""
    text = README.read_text()
    section = text.split("## First minute", 1)[1]
    line = re.search(r"^python train_all\.py .*$", section, re.M).group(0)
    return shlex.split(line)[2:]


class ToyDomains(list):
    """Two environments of 100 and 30 items, as a dataset's environments are indexed."""

    def __init__(self):
        super().__init__(TensorDataset(torch.arange(n).float().unsqueeze(1), torch.zeros(n).long()) for n in (100, 30))
        self.train_transform = self.eval_transform = None


def split_keys(splits) -> list:
    return [sorted(split.dataset.keys) for split in splits]


def test_examples_per_domain_samples_each_domain_before_the_holdout():
    domains = ToyDomains()
    _, eval_splits = make_splits(domains, [1], 0.2, trial_seed=0, examples_per_domain=40)
    sizes = {split.name: len(split.dataset) for split in eval_splits}
    # 40 of the first domain's 100 (8 held out); the second has only 30, all kept (6 held out)
    assert sizes == {"env0_in": 32, "env0_out": 8, "env1_in": 24, "env1_out": 6}
    again = make_splits(domains, [1], 0.2, trial_seed=0, examples_per_domain=40)[1]
    other_trial = make_splits(domains, [1], 0.2, trial_seed=1, examples_per_domain=40)[1]
    assert split_keys(again) == split_keys(eval_splits)
    assert split_keys(other_trial)[0] + split_keys(other_trial)[1] != split_keys(eval_splits)[0] + split_keys(eval_splits)[1]
    kept = set(split_keys(eval_splits)[0]) | set(split_keys(eval_splits)[1])
    assert len(kept) == 40 and kept <= set(range(100))


def test_examples_per_domain_zero_keeps_domainbeds_split_exactly():
    from domainbed import misc
    from domainbed.datasets import split_dataset

    domains = ToyDomains()
    _, eval_splits = make_splits(domains, [1], 0.2, trial_seed=3, examples_per_domain=0)
    out, in_ = split_dataset(domains[0], 20, misc.seed_hash(3, 0))
    assert eval_splits[0].dataset.keys == in_.keys and eval_splits[1].dataset.keys == out.keys


def test_examples_per_domain_is_refused_with_the_official_split(tmp_path, capsys):
    code = train_all.main(["t", "--dataset", "Synthetic", "--examples_per_domain", "10", "--split", "official",
                           "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--examples_per_domain 10" in err and "--split official" in err
    assert not (tmp_path / "out").exists()


def test_negative_examples_per_domain_is_one_line(tmp_path, capsys):
    code = train_all.main(["t", "--dataset", "Synthetic", "--examples_per_domain", "-1",
                           "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "examples_per_domain" in err


@pytest.fixture
def mnist_server(mnist_data, monkeypatch):
    """A local HTTP server holding the MNIST files, standing in for the public sources."""
    raw = mnist_data / "MNIST" / "raw"
    handler = functools.partial(QuietHandler, directory=str(raw))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    published = catalog.DATASETS["MNIST"]
    # the shared copies are gzipped anew: same content (content_md5 still checks it), other size and md5
    sources = tuple(dataclasses.replace(source, urls=(f"{url}/{source.filename}",), size=None, checksum=None)
                    for source in published.sources)
    monkeypatch.setitem(catalog.DATASETS, "MNIST", Dataset("MNIST", published.layout, sources, published.build))
    yield server
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_readme_demo_downloads_mnist_and_prints_the_table(mnist_server, tmp_path, monkeypatch, capsys):
    """The README's line, unchanged but for a shorter run, into an empty data folder."""
    monkeypatch.chdir(tmp_path)
    argv = readme_demo_line()
    assert "--download" in argv
    short = ["--steps", "1", "--checkpoint_freq", "1", "--examples_per_domain", "40", "--batch_size", "8"]
    code = train_all.main([*argv, *short, "--output_dir", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    data_dir = Path(argv[argv.index("--data_dir") + 1])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / data_dir / "MNIST" / "raw").iterdir()) == sorted(
        s.filename for s in catalog.DATASETS["MNIST"].sources)
    assert "MNIST: installed" in out and "| Selection" in out and "-90%" in out
    code = train_all.main([*argv, *short, "--test_envs", "0", "--output_dir", str(tmp_path / "out2")])
    assert code == 0 and "MNIST: fetching" not in capsys.readouterr().out  # a second run fetches nothing


def test_download_offline_is_one_line_before_the_run_exists(tmp_path, monkeypatch, capsys):
    def no_dns(host, port, timeout):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr("domainbed.download.fetch.open_connection", no_dns)
    code = train_all.main(["t", "--dataset", "RotatedMNIST", "--data_dir", str(tmp_path / "data"), "--download",
                           "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "could not fetch MNIST" in err and "no network" in err and "--mirror" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data" / "MNIST").exists()


def test_download_of_an_own_folder_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code = train_all.main(["t", "--dataset", "ImageFolder", "--data_dir", str(tmp_path / "data"), "--download",
                           "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ImageFolder" in err and "PACS" in err


def test_download_of_a_generated_dataset_fetches_nothing(tmp_path, monkeypatch):
    from domainbed.download import on_demand

    monkeypatch.setattr(on_demand, "install", lambda *args, **kwargs: pytest.fail("nothing to download"))
    on_demand.fetch_if_missing("Synthetic", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_weight_averaging_without_validation_items_is_one_line(tmp_path, capsys):
    """Three items per domain leave the out splits empty: SWAD has nothing to follow."""
    code = train_all.main(["t", "--dataset", "Synthetic", "--examples_per_domain", "3", "--steps", "2",
                           "--checkpoint_freq", "1", "--batch_size", "2", "--test_envs", "0",
                           "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "out splits are empty" in err and "--swad False" in err
