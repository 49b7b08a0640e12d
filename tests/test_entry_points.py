"""The installed commands (pyproject's [project.scripts]) and the train_all.py shim."""

import importlib
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_the_tools_users_run_most_are_console_commands_that_exist():
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert {"domainbed-train", "domainbed-sweep", "domainbed-collect-results", "domainbed-download"} <= set(scripts)
    for command, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), command


def test_train_all_is_the_train_command(capsys):
    import train_all
    from domainbed.scripts import train_all as train

    assert (train_all.main, train_all.run, train_all.make_parser, train_all.split_argv) == (
        train.main, train.run, train.make_parser, train.split_argv)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0 and "leave-one-domain-out" in capsys.readouterr().out


def test_the_interrupted_message_resumes_the_same_command(tmp_path):
    from domainbed.scripts.train_all import resume_command

    argv = ["demo", "--dataset", "Synthetic", "--resume", str(tmp_path), "--lr", "0.1"]
    assert resume_command(argv, tmp_path / "run") == (
        f"python train_all.py demo --dataset Synthetic --lr 0.1 --resume {tmp_path / 'run'}")
    assert resume_command(["demo", "--resume", "--lr", "0.1"], "R") == "python train_all.py demo --lr 0.1 --resume R"
