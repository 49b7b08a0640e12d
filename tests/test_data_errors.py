"""An unreadable image stops a run with one line and exits at once: before anything was saved the
launch leaves no run directory; later the run is kept with failed.json, which the sweep's status
reports and `--resume` continues once the image is fixed. The download tool's --check_images
names every bad file beforehand."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import kill_points
from domainbed.runs import layout, run_files
from domainbed.scripts import download, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
TINY = ["--dataset", "PACS", "--algorithm", "ERM", "--test_envs", "0", "--pretrained", "False", "--image_size", "16",
        "--backbone", "resnet18", "--swad", "False", "--steps", "2", "--checkpoint_freq", "1", "--batch_size", "4"]


def _pacs(root, per_class=3):
    """A tiny PACS-layout folder: four domains, two classes, `per_class` small JPEGs each."""
    for domain in DOMAINS:
        for label in ("dog", "horse"):
            folder = root / "PACS" / domain / label
            folder.mkdir(parents=True)
            for index in range(per_class):
                Image.new("RGB", (12, 12), (40 * index, 90, 0)).save(folder / f"{index:04d}.jpg")
    return root


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data


def _run_dirs(out):
    folder = out / "PACS"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_a_bad_image_at_the_start_leaves_no_run_directory_and_no_process(tmp_path):
    data = _pacs(tmp_path / "data")
    for index in range(3):  # every dog of a training domain: the first batch meets one
        _truncate(data / "PACS" / "cartoon" / "dog" / f"{index:04d}.jpg")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "train_all.py", "bad", *TINY, "--num_workers", "2", "--data_dir", str(data),
         "--output_dir", str(out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    lines = err.strip().splitlines()
    assert process.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: cannot read image ") and str(data / "PACS" / "cartoon" / "dog") in lines[0]
    assert _run_dirs(out) == []
    with pytest.raises(ProcessLookupError):  # no DataLoader worker outlives the run
        os.killpg(process.pid, 0)


def test_a_bad_image_later_keeps_the_run_and_resume_finishes_it_once_fixed(tmp_path, capsys, monkeypatch):
    import train_all

    data = _pacs(tmp_path / "data")
    dogs = sorted((data / "PACS" / "cartoon" / "dog").iterdir())
    originals = {}

    def corrupt_cartoon():  # after step 0's checkpoint, before step 1's evaluation, which reads them
        originals.update({path: _truncate(path) for path in dogs})

    argv = ["later", *TINY, "--num_workers", "0", "--data_dir", str(data), "--output_dir", str(tmp_path / "out")]
    kill_points.install("step:2", corrupt_cartoon, monkeypatch.setattr)
    assert train_all.main(argv) == 2
    monkeypatch.undo()
    (run_dir,) = _run_dirs(tmp_path / "out")
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: cannot read image ") and f"--resume {run_dir}" in err
    last_line = (run_dir / "log.txt").read_text().strip().splitlines()[-1]
    assert last_line.startswith("error: cannot read image ") and "cartoon" in last_line
    failure = run_files.read_failure(run_dir)
    assert failure == {"error": last_line[len("error: "):], "fold": "TE0", "test_envs": [0], "last_saved_step": 0}

    # skipping bad images changes which images are used: a new run, not a resumption
    assert train_all.main([*argv, "--resume", "--skip_bad_images", "True"]) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: skip_bad_images: skipped 3 unreadable images")
    assert error.startswith("error: cannot resume ") and "hparam skip_bad_images: False -> True" in error
    assert layout.failed_path(run_dir).is_file()

    for path, original in originals.items():
        path.write_bytes(original)
    result = train_all.run([*argv, "--resume"])
    assert result["out_dir"] == run_dir and not layout.failed_path(run_dir).exists()
    log = (run_dir / "log.txt").read_text()
    assert "[TE0] had failed after its checkpoint of step 0: cannot read image" in log
    assert "[TE0] resumed after step 0" in log and layout.table_json_path(run_dir).is_file()


def test_sweep_status_reports_a_failed_job_with_its_error(tmp_path, capsys):
    argv = ["--datasets", "Synthetic", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "2",
            "--output_dir", str(tmp_path)]
    failed, _ = sweep.make_jobs(sweep.parse_args(["status", *argv]))
    run_dir = failed.directory / "Synthetic" / "250101_00-00-00_ERM_hp0_trial0"
    run_dir.mkdir(parents=True)
    layout.args_path(run_dir).write_text(json.dumps({}))
    run_files.write_failure(run_dir, "cannot read image /d/cartoon/dog/0001.jpg: Truncated File Read", [1], 300)
    result = sweep.run(["status", *argv])
    assert result["counts"] == {"done": 0, "failed": 1, "incomplete": 0, "not launched": 1}
    out = capsys.readouterr().out
    assert "1 failed" in out
    assert f"failed: Synthetic ERM_hp0_trial0: {failed.directory}: TE1: cannot read image /d/cartoon/dog/0001.jpg: " \
           "Truncated File Read" in out


def test_check_images_lists_every_bad_file_and_fails(tmp_path, capsys):
    data = _pacs(tmp_path / "data")
    truncated = data / "PACS" / "photo" / "horse" / "0001.jpg"
    _truncate(truncated)
    not_an_image = data / "PACS" / "sketch" / "dog" / "notes.jpg"
    not_an_image.write_text("not an image")
    assert download.main(["--data_dir", str(data), "--check_images", "--datasets", "PACS"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    bad = [line for line in lines if line.startswith("PACS: cannot read image ")]
    assert len(bad) == 2 and str(truncated) in bad[0] and str(not_an_image) in bad[1]
    assert lines[-1] == "PACS: 25 images, 2 unreadable"

    # any folder of domains, as --dataset ImageFolder reads it
    assert download.main(["--data_dir", str(data / "PACS"), "--check_images", "--datasets", "ImageFolder"]) == 1
    assert sum("cannot read image" in line for line in capsys.readouterr().out.splitlines()) == 2

    truncated.unlink()
    not_an_image.unlink()
    assert download.main(["--data_dir", str(data), "--check_images"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "PACS: 23 images, 0 unreadable"


def test_check_images_of_an_absent_dataset_fails(tmp_path, capsys):
    assert download.main(["--data_dir", str(tmp_path), "--check_images", "--datasets", "VLCS"]) == 1
    assert "absent: VLCS" in capsys.readouterr().out
