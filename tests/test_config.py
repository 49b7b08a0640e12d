import pytest

from domainbed import hparams_registry
from domainbed.hparams.config import build_hparams, coerce, parse_overrides
from domainbed.errors import UsageError

DEFAULTS = {"lr": 5e-5, "batch_size": 32, "freeze_bn": True, "backbone": "resnet50", "swad_kwargs": {"n": 3}}


def test_overrides_are_typed_by_their_default(tmp_path):
    hparams = build_hparams(DEFAULTS, None, (), parse_overrides(
        ["--lr", "3e-5", "--batch_size", "16", "--freeze_bn", "False", "--backbone", "resnet18"]))
    assert hparams["lr"] == 3e-5 and isinstance(hparams["lr"], float)
    assert hparams["batch_size"] == 16 and hparams["freeze_bn"] is False and hparams["backbone"] == "resnet18"


@pytest.mark.parametrize("text,value", [("True", True), ("false", False), ("1", True), ("0", False), ("yes", True)])
def test_booleans_accept_the_usual_spellings(text, value):
    assert coerce("freeze_bn", text, True, "cli") is value


def test_bare_flag_means_true_and_equals_form_works():
    assert parse_overrides(["--use_alpha", "--lr=0.1", "--x", "-0.5"]) == [
        ("use_alpha", True), ("lr", "0.1"), ("x", "-0.5")]
    assert build_hparams(DEFAULTS, None, (), [("freeze_bn", True)])["freeze_bn"] is True


def test_precedence_registry_then_config_then_extra_yaml_then_cli(tmp_path):
    base = tmp_path / "config.yaml"
    base.write_text("lr: 1.0e-4\nbatch_size: 8\nfreeze_bn: false\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("batch_size: 12\nfreeze_bn: true\n")
    hparams = build_hparams(DEFAULTS, base, [extra], [("freeze_bn", "False")])
    assert hparams["lr"] == 1e-4 and hparams["batch_size"] == 12 and hparams["freeze_bn"] is False


def test_every_layer_sets_declared_keys_only(tmp_path):
    """config.yaml too: run settings are declared by their features, so no file adds keys."""
    base = tmp_path / "config.yaml"
    base.write_text("lr: 1.0e-4\nextra_key: 5\n")
    with pytest.raises(UsageError, match=f"unknown hparam 'extra_key' from {base}"):
        build_hparams(DEFAULTS, base)


def test_unknown_key_lists_valid_ones_and_suggests():
    with pytest.raises(UsageError, match=r"unknown hparam 'lrr' from the command line \(did you mean lr\?\); valid: "):
        build_hparams(DEFAULTS, None, (), [("lrr", "1")])


def test_unknown_key_in_extra_yaml_is_an_error(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("nonsense: 1\n")
    with pytest.raises(UsageError, match="nonsense"):
        build_hparams(DEFAULTS, None, [extra], ())


@pytest.mark.parametrize("key,value", [("lr", "fast"), ("batch_size", "3.5"), ("freeze_bn", "maybe")])
def test_badly_typed_value_names_key_type_and_value(key, value):
    with pytest.raises(UsageError, match=rf"hparam {key} expects .* but got '{value}'"):
        build_hparams(DEFAULTS, None, (), [(key, value)])


def test_non_boolean_without_value_is_an_error():
    with pytest.raises(UsageError, match="needs a value"):
        build_hparams(DEFAULTS, None, (), [("lr", True)])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_hparams(DEFAULTS, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(UsageError, match="mapping"):
        build_hparams(DEFAULTS, bad)


def test_registry_defaults_and_random_draws():
    hp = hparams_registry.default_hparams("ERM", "PACS")
    assert hp["lr"] == 5e-5 and hp["batch_size"] == 32 and hp["backbone"] == "resnet50" and hp["freeze_bn"]
    assert hparams_registry.default_hparams("ERM", "RotatedMNIST")["lr"] == 1e-3
    a = hparams_registry.random_hparams("ERM", "PACS", 1)
    assert a == hparams_registry.random_hparams("ERM", "PACS", 1)
    assert a != hparams_registry.random_hparams("ERM", "PACS", 2)
    with pytest.raises(KeyError, match="unknown algorithm 'Nope'; valid: .*ERM"):
        hparams_registry.default_hparams("Nope", "PACS")


NESTED = {**DEFAULTS, "swad_kwargs": {"n_converge": 3, "tolerance_ratio": 0.3}, "other": {"tolerance_ratio": 1.0}}


def test_nested_keys_by_dotted_path_as_sconf():
    hparams = build_hparams(DEFAULTS | {"swad_kwargs": {"n_converge": 3, "tolerance_ratio": 0.3}}, None, (),
                            parse_overrides(["--swad_kwargs.tolerance_ratio", "0.2", "--swad_kwargs.n_converge", "5"]))
    assert hparams["swad_kwargs"] == {"n_converge": 5, "tolerance_ratio": 0.2}
    assert isinstance(hparams["swad_kwargs"]["tolerance_ratio"], float)


def test_nested_keys_by_unique_leaf_name_as_sconf():
    defaults = DEFAULTS | {"swad_kwargs": {"n_converge": 3, "tolerance_ratio": 0.3}}
    hparams = build_hparams(defaults, None, (), parse_overrides(["--tolerance_ratio", "0.2"]))
    assert hparams["swad_kwargs"] == {"n_converge": 3, "tolerance_ratio": 0.2}
    assert defaults["swad_kwargs"]["tolerance_ratio"] == 0.3  # the defaults are not mutated


def test_ambiguous_leaf_name_lists_its_paths():
    with pytest.raises(UsageError, match=r"'tolerance_ratio' .* ambiguous; give one of "
                                         r"swad_kwargs.tolerance_ratio, other.tolerance_ratio"):
        build_hparams(NESTED, None, (), [("tolerance_ratio", "0.2")])
    hparams = build_hparams(NESTED, None, (), [("other.tolerance_ratio", "2")])
    assert hparams["other"] == {"tolerance_ratio": 2.0} and hparams["swad_kwargs"]["tolerance_ratio"] == 0.3


def test_bad_nested_key_or_value_is_one_line_error():
    with pytest.raises(UsageError, match=r"unknown hparam 'swad_kwargs.nope' .*valid: .*swad_kwargs.n_converge"):
        build_hparams(NESTED, None, (), [("swad_kwargs.nope", "1")])
    with pytest.raises(UsageError, match=r"hparam swad_kwargs.n_converge expects int .* but got 'x'"):
        build_hparams(NESTED, None, (), [("n_converge", "x")])
    with pytest.raises(UsageError, match="needs a value"):
        build_hparams(NESTED, None, (), [("n_converge", True)])


def test_swad_hparam_names_are_aliases():
    assert build_hparams(DEFAULTS, None, (), [("resnet18", "True")])["backbone"] == "resnet18"
    assert build_hparams(DEFAULTS, None, (), [("resnet18", True)])["backbone"] == "resnet18"
    assert build_hparams(DEFAULTS, None, (), [("resnet18", "False")])["backbone"] == "resnet50"
    assert build_hparams(DEFAULTS, None, (), [("class_balanced", "False")]) == DEFAULTS
    with pytest.raises(UsageError, match="class_balanced .* not supported here; valid: False"):
        build_hparams(DEFAULTS, None, (), [("class_balanced", "True")])


def test_flatten_spells_nested_keys_out():
    from domainbed.hparams.config import flatten

    assert flatten({"lr": 1.0, "swad_kwargs": {"n_converge": 3}}) == {"lr": 1.0, "swad_kwargs.n_converge": 3}
