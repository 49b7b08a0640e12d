import math

import pytest

from domainbed.results import report, selection
from domainbed.errors import UsageError


def _record(step, train_out, test_in, test_out):
    return {"step": step, "train_out": train_out, "test_in": test_in, "test_out": test_out}


RECORDS = [
    _record(0, 0.50, 0.40, 0.45),
    _record(100, 0.80, 0.55, 0.70),
    _record(200, 0.70, 0.65, 0.75),
    _record(300, 0.80, 0.60, 0.60),  # ties train_out with step 100: the earlier wins
    _record(400, 0.75, 0.58, 0.62),
]


def test_rows_match_hand_computed_values():
    rows = selection.select(RECORDS)
    assert rows == {
        "oracle": 0.65,  # best test_out is step 200
        "iid": 0.55,  # best train_out is step 100 (first of the tie)
        "last": 0.58,
        "last (inD)": 0.75,
        "iid (inD)": 0.80,
    }


def test_every_row_has_a_rule_and_oracle_is_flagged():
    for row in selection.ROWS:
        assert selection.describe(row)
    assert "not a result" in selection.describe("oracle")


def test_the_two_oracles_are_named_apart():
    from domainbed.scripts import collect_results

    assert "SWAD's oracle" in selection.describe("oracle")
    assert "DomainBed's oracle" in collect_results.ORACLE and "last checkpoint" in collect_results.ORACLE


def test_legend_heading_names_training_domain_accuracy_of_the_ind_rows():
    rows = selection.select(RECORDS)
    text = report.format_table(report.build_table([rows], ["A"]), ["A"],
                               {row: selection.describe(row) for row in rows})
    heading = next(line for line in text.splitlines() if not line.startswith(("+", "|")))  # the first under the table
    assert "test-domain accuracy" in heading and "(inD): training-domain validation accuracy" in heading
    for row in ("last (inD)", "iid (inD)"):
        assert selection.describe(row).startswith(("training-domain", "best training-domain"))


def test_empty_records_are_an_error():
    with pytest.raises(UsageError, match="no checkpoint records"):
        selection.select([])


def test_records_without_summaries_are_an_error():
    with pytest.raises(UsageError, match="test_in"):
        selection.select([{"step": 0}])


def test_table_averages_over_domains_and_skips_incomplete_rows():
    folds = [{"iid": 0.5, "SWAD": 0.7}, {"iid": 0.7}]
    table = report.build_table(folds, ["A", "B"])
    assert table["iid"] == {"A": 0.5, "B": 0.7, "Avg.": pytest.approx(0.6)}
    assert "Avg." not in table["SWAD"]
    text = report.format_table(table, ["A", "B"], {"iid": "rule text"})
    assert "Avg." in text and "60.00" in text and "iid: rule text" in text and "-" in text


@pytest.mark.parametrize("key, bad", [("tr_outloss", math.nan), ("train_out", math.nan), ("test_in", math.inf)])
def test_records_with_a_nonfinite_number_select_nan_rows(key, bad):
    """A NaN validation loss with finite accuracies (the --lr 1e3 run) is no result either: the
    accuracies of NaN logits are arbitrary."""
    records = [{**record, "tr_outloss": 1.0} for record in RECORDS]
    records[2] = {**records[2], key: bad}
    rows = selection.select(records)
    assert set(rows) == set(selection.ROWS) and all(math.isnan(value) for value in rows.values())


def test_a_nan_row_prints_nan_with_a_note_never_a_number():
    table = report.build_table([{"iid": 0.5, "last": 0.4}, {"iid": math.nan, "last": 0.6}], ["A", "B"])
    assert math.isnan(table["iid"]["Avg."])
    text = report.format_table(table, ["A", "B"], {"iid": "rule text"})
    iid_line = next(line for line in text.splitlines() if line.startswith("| iid"))
    assert iid_line.split("|")[2:5] == [" 50.000% ", "   nan   ", "   nan   "], iid_line
    assert "nan%" not in text and f"nan: {report.NONFINITE_NOTE}" in text and "Notes:" in text
    finite = report.format_table(report.build_table([{"iid": 0.5}], ["A"]), ["A"], {})
    assert "nan" not in finite and "Notes:" not in finite


def test_collect_results_selects_by_the_same_rules_as_the_rows():
    from pathlib import Path

    from domainbed.runs.reader import Run
    from domainbed.scripts import collect_results

    run = Run(Path("toy"), {"dataset": "Toy", "algorithm": "ERM"}, records={(0,): RECORDS})
    rows = selection.select(RECORDS)
    assert collect_results._training_domain(run, (0,)) == (rows["iid (inD)"], rows["iid"])
    assert collect_results._oracle(run, (0,)) == (RECORDS[-1]["test_out"], rows["last"])


def _loo_record(test_envs, step, **accuracies):
    return {"test_envs": list(test_envs), "step": step, **accuracies}


def test_leave_one_domain_out_follows_domainbeds_rule_by_hand():
    # Three environments; the fold of test environment 0 at steps 0, 10, 20. Each record evaluates
    # env0..env2's out splits, which is how the rule counts the environments.
    outs = {"env0_out": 0.1, "env1_out": 0.1, "env2_out": 0.1}
    single = [_loo_record([0], 0, test_in=0.30, env0_in=0.30, **outs),
              _loo_record([0], 10, test_in=0.50, env0_in=0.50, **outs),
              _loo_record([0], 20, test_in=0.70, env0_in=0.70, **outs)]
    # dyadic accuracies, so that the means and the tie are exact
    pairs = {
        1: [_loo_record([0, 1], 0, env1_in=0.5, env0_in=0.0), _loo_record([0, 1], 10, env1_in=0.75, env0_in=0.0),
            _loo_record([0, 1], 20, env1_in=1.0, env0_in=0.0)],
        # no record at step 20: that step cannot be validated, however good fold (0, 1) is there
        2: [_loo_record([0, 2], 0, env2_in=0.75, env0_in=0.0), _loo_record([0, 2], 10, env2_in=0.25, env0_in=0.0)],
    }
    # step 0: (0.5 + 0.75) / 2 = 0.625; step 10: (0.75 + 0.25) / 2 = 0.5; step 20: not validated
    assert selection.leave_one_domain_out(single, pairs) == (0.625, 0.30)
    pairs[2][1]["env2_in"] = 0.5  # step 10: (0.75 + 0.5) / 2 = 0.625, a tie: the earlier step
    assert selection.leave_one_domain_out(single, pairs) == (0.625, 0.30)
    pairs[2][1]["env2_in"] = 0.75  # step 10: 0.75
    assert selection.leave_one_domain_out(single, pairs) == (0.75, 0.50)


def test_leave_one_domain_out_without_a_pair_fold_or_with_a_nan_has_no_result():
    outs = {"env0_out": 0.1, "env1_out": 0.1, "env2_out": 0.1}
    single = [_loo_record([1], 0, test_in=0.5, **outs)]
    complete = {0: [_loo_record([0, 1], 0, env0_in=0.6)], 2: [_loo_record([1, 2], 0, env2_in=0.8)]}
    assert selection.leave_one_domain_out(single, complete) == pytest.approx((0.7, 0.5))
    assert selection.leave_one_domain_out(single, {0: complete[0]}) is None
    assert selection.leave_one_domain_out(single, {}) is None
    nan = {**complete, 2: [_loo_record([1, 2], 0, env2_in=math.nan)]}
    assert selection.leave_one_domain_out(single, nan) is None
