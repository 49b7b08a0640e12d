"""The published results shipped with the package: every entry sourced, valid, and known to the registries."""

import numpy as np
import pytest

from domainbed.errors import UsageError
from domainbed.results import published


@pytest.fixture(scope="module")
def entries():
    return published.load()


def test_every_entry_names_its_source_and_protocol(entries):
    assert len(entries) > 300
    for entry in entries:
        for key in published.SOURCE_KEYS:
            assert entry.source[key], (entry.index, key)
        assert len(entry.source["commit"]) == 40
        assert set(published.PROTOCOL_KEYS) <= set(entry.protocol)


def test_every_method_and_dataset_exists_in_the_registries(entries):
    assert published.check_registries(entries) == []


def test_an_average_is_the_mean_of_its_domains_to_the_printed_digit(entries):
    # a transcription check: the sources print both rounded to 0.1, the average from unrounded domains
    for entry in entries:
        if entry.domains is not None and entry.average is not None and "source's rounding" not in entry.note:
            assert abs(np.mean(entry.domains) - entry.average) <= 0.1 + 1e-9, entry


def test_the_domainbed_erm_line_as_its_table_prints_it(entries):
    (erm,) = [e for e in entries if (e.method, e.dataset, e.selection, e.source_key) ==
              ("ERM", "PACS", "training-domain", "domainbed_2020")]
    assert erm.domains == [84.7, 80.8, 97.2, 79.3] and erm.domain_spread == [0.4, 0.6, 0.3, 1.0]
    assert (erm.average, erm.average_spread) == (85.5, 0.2)
    assert erm.protocol["backbone"] == "resnet50" and erm.protocol["trials"] == 3
    assert erm.standard_error(0.4) == 0.4


def test_the_required_papers_are_covered(entries):
    assert {e.source_key for e in entries} >= {"domainbed_2020", "miro_table1", "diwa_readme", "qtdog_readme",
                                                "rsc_readme"}
    assert {e.selection for e in entries if e.source_key == "domainbed_2020"} == set(published.SELECTIONS)
    assert any(e.averaging == "SWAD" and e.method == "ERM" for e in entries)
    assert any(e.quantized for e in entries)
    assert any(e.protocol["split"] == "official" and e.method == "RSC" for e in entries)


def _write(tmp_path, entry, source=None):
    source = source or {"paper": "P", "table": "T", "file": "f", "commit": "0" * 40}
    protocol = {key: None for key in published.PROTOCOL_KEYS} | {"spread": "SD", "trials": 4}
    path = tmp_path / "p.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"sources": {"s": source}, "protocols": {"p": protocol}, "entries": [entry]}))
    return path


GOOD = {"method": "ERM", "dataset": "PACS", "selection": "training-domain", "protocol": "p", "source": "s",
        "domains": [1, 2, 3, 4], "domain_spread": [2, 2, 2, 2], "average": 2.5}


def test_a_valid_file_loads_and_an_sd_becomes_a_standard_error(tmp_path):
    (entry,) = published.load(_write(tmp_path, GOOD))
    assert entry.averaging == "none" and not entry.quantized and entry.variant is None
    assert entry.standard_error(2.0) == 1.0  # SD 2 over 4 trials


@pytest.mark.parametrize("change, message", [
    ({"source": "nowhere"}, "source 'nowhere' is not under sources"),
    ({"protocol": "q"}, "protocol 'q' is not under protocols"),
    ({"selection": "best"}, "selection 'best'; valid: training-domain"),
    ({"averaging": "EMA"}, "averaging 'EMA'; valid"),
    ({"domain_spread": [1, 2]}, "domain_spread needs one number per domain"),
    ({"colour": "red"}, "unknown keys colour"),
    ({"method": None}, "lacks method"),
    ({"domains": None, "domain_spread": None, "average": None}, "gives no number"),
    ({"spread": "IQR"}, "spread 'IQR'"),
])
def test_a_bad_entry_is_refused_naming_what_is_wrong(tmp_path, change, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        published.load(_write(tmp_path, GOOD | change))


def test_a_source_without_a_commit_and_a_missing_or_broken_file_are_refused(tmp_path):
    with pytest.raises(UsageError, match="source s: lacks commit"):
        published.load(_write(tmp_path, GOOD, {"paper": "P", "table": "T", "file": "f", "commit": ""}))
    with pytest.raises(UsageError, match="does not exist"):
        published.load(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("entries: [")
    with pytest.raises(UsageError, match="no valid YAML"):
        published.load(tmp_path / "bad.yaml")


def test_the_registry_check_names_unknown_methods_datasets_and_wrong_domain_counts(tmp_path):
    entries = [published.load(_write(tmp_path, GOOD | change))[0]
               for change in ({"method": "NoSuchMethod"}, {"dataset": "NoSuchData"},
                              {"domains": [1, 2, 3], "domain_spread": None})]
    problems = published.check_registries(entries)
    assert len(problems) == 3
    assert "NoSuchMethod" in problems[0] and "NoSuchData" in problems[1] and "3 domains for PACS" in problems[2]


def test_every_named_backbone_is_registered(entries):
    from domainbed.networks import BACKBONES  # the package registers every backbone

    for entry in entries:
        backbone = entry.protocol["backbone"]
        assert backbone is None or backbone.split()[0] in {*BACKBONES, "MNIST_CNN"}, (entry.index, backbone)
