"""Help: every hparam has a line of meaning, `--help` lists the chosen algorithm's hparams with
their defaults, `--resume NAME` before the name resumes, flags in any order, every script's
--help has an example."""

import json
import subprocess
import sys

import pytest

import train_all
from domainbed import algorithms, datasets, hparams_registry
from domainbed.hparams.config import BASE_CONFIG, load_yaml
from tests.conftest import REPO


@pytest.mark.parametrize("algorithm", sorted(algorithms.ALGORITHMS))
def test_every_hparam_of_every_algorithm_and_config_key_is_declared_with_a_meaning(algorithm):
    for dataset in sorted(datasets.DATASETS):
        declared = hparams_registry.declarations(algorithm, dataset)
        assert set(load_yaml(BASE_CONFIG)) <= set(declared)
        assert all(hparam.help and "\n" not in hparam.help for hparam in declared.values())


def test_a_declaration_without_meaning_is_refused():
    from domainbed.hparams.declare import DeclarationError, Declarations

    declared = Declarations("PACS")
    declared("lr", 1e-3, help="learning rate")
    declared("lr", 1e-4)  # a redefinition keeps the meaning
    assert declared.hparams["lr"].help == "learning rate" and declared.hparams["lr"].default == 1e-4
    with pytest.raises(DeclarationError, match="'new_knob' without help"):
        declared("new_knob", 1.0)


def _help(*argv, capsys):
    parser = train_all.make_parser()
    known, _ = train_all.split_argv(parser, list(argv))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(known)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_the_chosen_algorithms_hparams_with_defaults(capsys):
    text = _help("--algorithm", "SAGM_DG", "--help", capsys=capsys)
    own = text.split("hparams of SAGM_DG:")[1].split("hparams of every algorithm:")[0]
    assert "--rho 0.05 " in own and "--alpha 0.001 " in own and "radius of the sharpness-aware" in own
    assert "--lr 3e-05 " in text.split("hparams of every algorithm:")[1]  # SAGM's PACS lr
    assert "--swad LossValley " in text and "--q_bits 7 " in text and "examples:" in text
    assert "--alpha 0.6 " in _help("--dataset", "VLCS", "--algorithm", "GradSurgery", "-h", capsys=capsys)
    assert "unknown algorithm 'Nope'" in _help("--algorithm", "Nope", "--help", capsys=capsys)


def test_resume_before_the_name_and_flags_in_any_order(tmp_path):
    parser = train_all.make_parser()
    known, extra = train_all.split_argv(parser, ["--resume", "demo", "--dataset", "Synthetic", "--lr", "-0.5"])
    args = parser.parse_args(known)
    assert (args.name, args.resume, args.dataset, extra) == ("demo", True, "Synthetic", ["--lr", "-0.5"])
    known, _ = train_all.split_argv(parser, ["--resume", str(tmp_path), "demo"])
    assert parser.parse_args(known).resume == str(tmp_path)  # a path is the run directory
    known, _ = train_all.split_argv(parser, ["--dataset", "Synthetic", "demo", "--tag", "x", "extra.yaml"])
    args = parser.parse_args(known)
    assert (args.name, args.configs, args.tag) == ("demo", ["extra.yaml"], "x")

    common = ["--dataset", "Synthetic", "--steps", "1", "--checkpoint_freq", "1", "--test_envs", "0",
              "--batch_size", "4", "--num_workers", "0", "--output_dir", str(tmp_path)]
    first = train_all.run(["demo", *common])
    second = train_all.run(["--resume", "demo", *common])
    assert second["out_dir"] == first["out_dir"]
    assert "[TE0] finished earlier: skipped" in (first["out_dir"] / "log.txt").read_text()
    assert json.loads((first["out_dir"] / "args.json").read_text())["tag"] is None


@pytest.mark.parametrize("module", ["domainbed.scripts.sweep", "domainbed.scripts.collect_results",
                                    "domainbed.scripts.ensemble", "domainbed.scripts.flatness",
                                    "domainbed.scripts.download", "domainbed.scripts.benchmark",
                                    "domainbed.scripts.check_method", "domainbed.scripts.list_top_hparams"])
def test_every_script_help_has_an_example(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout and f"python -m {module}" in result.stdout


def test_help_lists_the_valid_datasets_and_algorithms(capsys):
    text = " ".join(_help("--help", capsys=capsys).split())  # argparse wraps lines
    for flag in ("--data_dir DATA_DIR folder", "--dataset DATASET one of", "--algorithm ALGORITHM one of"):
        assert flag in text
    assert ", ".join(sorted(datasets.DATASETS)) in text and ", ".join(sorted(algorithms.ALGORITHMS)) in text
    assert "package.module:Class" in text


def test_sweep_help_shows_defaults_and_launchers():
    from domainbed.scripts import sweep

    text = " ".join(sweep.make_parser().format_help().split())
    assert "--launcher {local,multi_gpu,slurm}" in text and "(default: local)" in text
    assert "(default: 20)" in text and "(default: 3)" in text and "(default: datadir/)" in text


@pytest.mark.parametrize("argv, hint", [
    (["--datadir", "DATA"], "unknown hparam 'datadir' from the command line (did you mean --data_dir?); valid: "),
    (["--check_freq", "3"], "(did you mean --checkpoint_freq?)"),
    (["--lrr", "1"], "(did you mean lr?)"),
    (["--dataset", "synthetic"], "unknown dataset 'synthetic' (did you mean Synthetic?); valid: "),
    (["--algorithm", "erm"], "unknown algorithm 'erm' (did you mean ERM?); valid: "),
])
def test_did_you_mean_covers_flags_and_the_case_of_names(argv, hint, tmp_path, capsys):
    out = tmp_path / "out"
    assert train_all.main(["x", "--dataset", "Synthetic", *argv, "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert hint in error and len(error.strip().splitlines()) == 1
    assert not out.exists()
