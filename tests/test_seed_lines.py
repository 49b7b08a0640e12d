"""The seeds' published command lines on the real PACS images, small: the protocol they run
(SWAD on unless the line says --swad False) and SWAD's table header."""

import pytest

GRAD_SURGERY = ["--deterministic", "--trial_seed", "0", "--checkpoint_freq", "100", "--steps", "5000",
                "--n_parts", "10", "--alpha", "0.6", "--use_alpha", "--algorithm", "GradSurgery", "--lr", "3e-5",
                "--resnet_dropout", "0.2", "--weight_decay", "1e-4"]
QT_DOG = ["--quant", "1", "--q_steps", "100"]
SAGM = ["--deterministic", "--trial_seed", "0", "--algorithm", "SAGM_DG", "--checkpoint_freq", "100",
        "--alpha", "0.001", "--lr", "3e-5", "--weight_decay", "1e-4", "--resnet_dropout", "0.5", "--swad", "False"]
HEADER = "| Selection  | art_painting | cartoon | photo | sketch | Avg. |"
# one fold, two evaluations: the real-data evaluations dominate (about 10 s each on 2 cores)
TINY = ["--pretrained", "False", "--backbone", "resnet18", "--image_size", "32", "--batch_size", "4",
        "--steps", "2", "--checkpoint_freq", "2", "--swad_bn_steps", "2", "--test_envs", "0"]
DONE_WHEN = ["--image_size", "64", "--steps", "20", "--checkpoint_freq", "10", "--pretrained", "False"]


def _header(result):
    text = (result["out_dir"] / "table.txt").read_text().splitlines()
    return " ".join(text[1].split())


def _run(run_train_all, shared_data, line, extra):
    return run_train_all("seed", "--dataset", "PACS", "--data_dir", shared_data, *line, *extra)


def test_grad_surgery_line_runs_unchanged_with_swad_on_synthetic(run_train_all):
    """The seed's flags as they are, with SWAD's rows and table, on the in-memory Synthetic set;
    the same line on the real PACS images is the slow test below (real-PACS training in the
    default suite: test_official_split_training.py)."""
    result = run_train_all("seed", "--dataset", "Synthetic", *GRAD_SURGERY, "--steps", "2", "--checkpoint_freq", "2",
                           "--swad_bn_steps", "2", "--batch_size", "4", "--test_envs", "0")
    assert _header(result) == "| Selection | d0 | Avg. |"
    assert list(result["rows"])[-2:] == ["SWAD", "SWAD (inD)"]


@pytest.mark.slow
def test_grad_surgery_line_runs_with_swad_and_prints_swads_table(shared_data, run_train_all):
    result = _run(run_train_all, shared_data, GRAD_SURGERY, TINY)
    assert _header(result) == "| Selection | art_painting | Avg. |"
    assert list(result["rows"])[-2:] == ["SWAD", "SWAD (inD)"]


@pytest.mark.slow
def test_qt_dog_line_runs_with_swad(shared_data, run_train_all):
    result = _run(run_train_all, shared_data, QT_DOG, [*TINY, "--q_steps", "1"])
    assert list(result["rows"])[-2:] == ["SWAD", "SWAD (inD)"]


@pytest.mark.slow
def test_sagm_line_prints_no_swad_row(shared_data, run_train_all):
    result = _run(run_train_all, shared_data, SAGM, TINY)
    assert "SWAD" not in result["rows"] and "iid" in result["rows"]


@pytest.mark.slow
@pytest.mark.parametrize("line", [GRAD_SURGERY, QT_DOG], ids=["GradSurgery", "QT-DoG"])
def test_seed_lines_at_the_issues_size(shared_data, run_train_all, line):
    result = _run(run_train_all, shared_data, line, DONE_WHEN)
    assert _header(result) == " ".join(HEADER.split())
    assert {"SWAD", "SWAD (inD)"} <= set(result["rows"])


@pytest.mark.slow
def test_sagm_line_at_the_issues_size(shared_data, run_train_all):
    result = _run(run_train_all, shared_data, SAGM, DONE_WHEN)
    assert _header(result) == " ".join(HEADER.split()) and "SWAD" not in result["rows"]
