"""The reproduction scripts: published lines over trial seeds 0-2, datasets chosen by argument,
finished runs skipped. PYTHON=echo prints each command line instead of running it."""

import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script, *argv, cwd):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "echo", "OUTPUT_DIR": "out"}
    return subprocess.run(["bash", str(SCRIPTS / script), *argv], cwd=cwd, env=env, capture_output=True, text=True)


def _lines(result):
    assert result.returncode == 0, result.stderr
    return [line.split()[1:] for line in result.stdout.splitlines() if "train_all.py" in line]


def test_swad_lines_over_three_trial_seeds_with_vlcs_published_settings(tmp_path):
    lines = _lines(_run("swad.sh", "DATA", "VLCS", "--", "--steps", "7", cwd=tmp_path))
    assert len(lines) == 6
    swad = [line for line in lines if line[0].startswith("SWAD_")]
    assert [line[0] for line in swad] == ["SWAD_VLCS0", "SWAD_VLCS1", "SWAD_VLCS2"]
    for trial, line in enumerate(swad):
        text = " ".join(line)
        assert f"--trial_seed {trial}" in text and "--checkpoint_freq 50" in text
        assert "--tolerance_ratio 0.2" in text and "--swad" not in text
        assert text.endswith("--output_dir out --resume --steps 7")
    assert all("--swad False" in " ".join(line) for line in lines if line[0].startswith("ERM_"))


def test_finished_runs_are_skipped_and_unfinished_resumed(tmp_path):
    finished = tmp_path / "out" / "PACS" / "261203_10-00-00_SAGM_PACS0"
    finished.mkdir(parents=True)
    (finished / "table.json").write_text("{}")
    (tmp_path / "out" / "PACS" / "261203_10-00-00_SAGM_PACS1").mkdir()
    result = _run("sagm.sh", "DATA", "PACS", cwd=tmp_path)
    names = [line[0] for line in _lines(result)]
    assert "SAGM_PACS0" not in names and "SAGM_PACS1" in names and "SAM_PACS0" in names
    assert "finished: out/PACS/261203_10-00-00_SAGM_PACS0 (skipped)" in result.stdout


def test_a_finished_run_whose_name_only_ends_like_a_job_does_not_skip_it(tmp_path):
    other = tmp_path / "out" / "PACS" / "261203_10-00-00_my_SAM_PACS0"
    other.mkdir(parents=True)
    (other / "table.json").write_text("{}")
    result = _run("sagm.sh", "DATA", "PACS", cwd=tmp_path)
    assert "SAM_PACS0" in [line[0] for line in _lines(result)] and "skipped" not in result.stdout


@pytest.mark.parametrize("script", ["gradsurgery.sh", "qtdog.sh", "rsc.sh", "dmg.sh"])
def test_each_script_runs_its_lines_and_refuses_an_unknown_dataset(tmp_path, script):
    lines = _lines(_run(script, "DATA", "PACS", cwd=tmp_path))
    assert lines and all("--dataset PACS" in " ".join(line) for line in lines)
    trials = {" ".join(line).split("--trial_seed ")[1].split()[0] for line in lines}
    assert {"0", "1", "2"} <= trials
    bad = _run(script, "DATA", "MNIST", cwd=tmp_path)
    assert bad.returncode == 2 and "dataset MNIST is not in this table" in bad.stderr


def test_seed_lines_keep_swad_as_the_official_code():
    gradsurgery = (SCRIPTS / "gradsurgery.sh").read_text()
    qtdog = (SCRIPTS / "qtdog.sh").read_text()
    assert "--swad" not in gradsurgery.split("done\n")[0].split("for dataset")[1]
    assert "--quant 1 --q_steps 100" in qtdog and "--swad False" not in qtdog


# Stands in for python: a train_all.py line finishes its run at once in OUTPUT_DIR/DATASET/
# TIMESTAMP_NAME (a counter for the clock, so that every run has its own directory and the
# later one is newer), as a real run would, and every line is logged.
FAKE_PYTHON = r"""#!/bin/bash
echo "$*" >> "$JOBS_LOG"
case "$1" in *train_all.py) ;; *) exit 0 ;; esac
name="$2"; dataset="$4"
while [ "$1" != --output_dir ]; do shift; done
count=$(find "$2" -mindepth 2 -maxdepth 2 -type d 2>/dev/null | wc -l)
run="$2/$dataset/$(printf '260101_%02d-%02d-%02d' $((count / 3600)) $((count / 60 % 60)) $((count % 60)))_$name"
mkdir -p "$run" && echo '{}' > "$run/table.json"
"""

JOBS = {"swad.sh": 5 * 3 * 2, "sagm.sh": 5 * 3 * 3, "gradsurgery.sh": 5 * 3, "qtdog.sh": 5 * 5, "rsc.sh": 2 * 3,
        "dmg.sh": 2 * 3 * 3}


def _run_for_real(script, cwd):
    """`script` over its default datasets with FAKE_PYTHON: (its stdout, the command lines it ran)."""
    log = cwd / f"{script}.jobs"
    log.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(cwd / "python"), "OUTPUT_DIR": "out", "JOBS_LOG": str(log)}
    result = subprocess.run(["bash", str(SCRIPTS / script), "DATA"], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout, [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def _train_all_lines(lines):
    return [line[1:] for line in lines if line[0].endswith("train_all.py")]


def test_every_script_runs_all_its_jobs_after_every_other_into_one_output_directory(tmp_path):
    (tmp_path / "python").write_text(FAKE_PYTHON)
    (tmp_path / "python").chmod(0o755)
    jobs = set()
    for script, count in JOBS.items():
        stdout, lines = _run_for_real(script, tmp_path)
        train_all = _train_all_lines(lines)
        assert "skipped" not in stdout and len(train_all) == count, script
        jobs |= {(line[2], line[0]) for line in train_all}  # (dataset, run name)
        if script == "qtdog.sh":  # EoQ ensembles the five runs of its dataset
            ensembles = [line[2:] for line in lines if line[:2] == ["-m", "domainbed.scripts.ensemble"]]
            assert [[Path(path).name.split("_", 2)[2] for path in runs] for runs in ensembles] == [
                [f"qtdog{trial}" for trial in range(5)]] * 5
    assert len(jobs) == sum(JOBS.values())  # no two jobs share a run, so none resumes another's
    runs = {(path.parent.name, path.name.split("_", 2)[2]) for path in (tmp_path / "out").glob("*/*")}
    assert runs == jobs
    for script, count in JOBS.items():  # started again, each script finds its own runs finished
        stdout, lines = _run_for_real(script, tmp_path)
        assert _train_all_lines(lines) == [] and stdout.count("(skipped)") == count, script
