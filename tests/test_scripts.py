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
    swad = [line for line in lines if line[0].startswith("VLCS")]
    assert [line[0] for line in swad] == ["VLCS0", "VLCS1", "VLCS2"]
    for trial, line in enumerate(swad):
        text = " ".join(line)
        assert f"--trial_seed {trial}" in text and "--checkpoint_freq 50" in text
        assert "--tolerance_ratio 0.2" in text and "--swad" not in text
        assert text.endswith("--output_dir out --resume --steps 7")
    assert all("--swad False" in " ".join(line) for line in lines if line[0].startswith("ERM_"))


def test_finished_runs_are_skipped_and_unfinished_resumed(tmp_path):
    finished = tmp_path / "out" / "PACS" / "261203_10-00-00_PACS0"
    finished.mkdir(parents=True)
    (finished / "table.json").write_text("{}")
    (tmp_path / "out" / "PACS" / "261203_10-00-00_PACS1").mkdir()
    result = _run("sagm.sh", "DATA", "PACS", cwd=tmp_path)
    names = [line[0] for line in _lines(result)]
    assert "PACS0" not in names and "PACS1" in names and "SAM_PACS0" in names
    assert "finished: out/PACS/261203_10-00-00_PACS0 (skipped)" in result.stdout


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
