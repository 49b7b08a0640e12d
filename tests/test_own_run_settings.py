"""A method's own run settings (`Algorithm.own_run_settings`): what its repository's config.yaml
sets otherwise than SWAD's applies over config.yaml and under extra yaml files and the command
line; it may name run settings only, with values in their ranges; every method that declares
none keeps config.yaml's settings (SWAD on for the SWAD family's published lines)."""

import pytest

from domainbed import algorithms, hparams_registry
from domainbed.algorithms import contract
from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.erm import ERM
from domainbed.hparams.checks import check_hparams
from domainbed.hparams.config import run_hparams
from domainbed.hparams.declare import DeclarationError
from domainbed.hparams.help import hparams_help


def _toy(monkeypatch, settings):
    """An ERM whose repository configures `settings`, registered for this test only."""

    class Toy(ERM):
        NAME = "Toy"

        @classmethod
        def own_run_settings(cls, dataset):
            return settings

    monkeypatch.setitem(algorithms.ALGORITHMS, "Toy", Toy)
    return Toy


def test_own_settings_apply_over_config_yaml_and_under_yaml_files_and_the_command_line(monkeypatch, tmp_path):
    _toy(monkeypatch, {"swad": "IIDMax", "swad_kwargs": {"n_converge": 5}, "test_batchsize": 64})
    hparams = run_hparams("Toy", "PACS")
    assert (hparams["swad"], hparams["test_batchsize"]) == ("IIDMax", 64)  # config.yaml says LossValley, 128
    assert hparams["swad_kwargs"] == {"n_converge": 5, "n_tolerance": 6, "tolerance_ratio": 0.3, "bookkeeping": "reference"}
    extra = tmp_path / "extra.yaml"
    extra.write_text("swad: SMA\n")
    assert run_hparams("Toy", "PACS", extra_configs=[extra])["swad"] == "SMA"
    assert run_hparams("Toy", "PACS", extra_configs=[extra], overrides=[("swad", "False")])["swad"] == "False"
    assert run_hparams("Toy", "PACS", overrides=[("test_batchsize", "32")])["test_batchsize"] == 32
    assert "run settings (config.yaml, then Toy's own swad, swad_kwargs, test_batchsize)" in hparams_help("Toy", "PACS")


@pytest.mark.parametrize("settings, found", [
    ({"lr": 1.0}, "Toy.own_run_settings sets 'lr', which is no run setting; valid: "),
    ({"swad_typo": False}, "Toy.own_run_settings sets 'swad_typo', which is no run setting; valid: "),
])
def test_only_run_settings_may_be_set(monkeypatch, settings, found):
    _toy(monkeypatch, settings)
    with pytest.raises(DeclarationError) as error:
        run_hparams("Toy", "PACS")
    assert str(error.value).startswith(found) and "swad" in str(error.value) and "\n" not in str(error.value)
    assert contract.check_declarations("Toy") == [str(error.value)]


def test_a_value_out_of_range_is_a_defect_and_a_usage_error(monkeypatch):
    _toy(monkeypatch, {"q_bits": 1})
    (defect,) = contract.check_declarations("Toy")
    assert defect.startswith("Toy's own run settings on Synthetic: hparam q_bits 1 is out of range")
    from domainbed.errors import UsageError

    with pytest.raises(UsageError, match="hparam q_bits 1 is out of range"):
        check_hparams("Toy", "PACS", run_hparams("Toy", "PACS"))


def test_miro_sets_swad_off_and_every_other_method_keeps_config_yaml():
    assert Algorithm.own_run_settings("PACS") == {}
    for name, algorithm_class in sorted(algorithms.ALGORITHMS.items()):
        own = hparams_registry.own_run_settings(name, "PACS")
        if name == "MIRO":
            assert own == {"swad": False} and run_hparams(name, "PACS")["swad"] == "False"
            continue
        assert own == {} and "own_run_settings" not in vars(algorithm_class), name
        hparams = run_hparams(name, "PACS")
        assert (hparams["swad"], hparams["test_batchsize"]) == ("LossValley", 128), name
