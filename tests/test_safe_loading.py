"""Nothing we load runs code, and a damaged file is noticed: crafted pickles through every
loader (--resume, the ensemble and flatness tools, the compact loader), checksums, fallback."""

import os

import pytest
import torch

import train_all
from domainbed.runs import checkpoint, model_io, persistence
from domainbed.errors import UsageError
from domainbed.quant import compact
from domainbed.scripts import ensemble, flatness
from domainbed.training import experiment

FAST = ["--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "4", "--checkpoint_freq", "2", "--batch_size", "8",
        "--test_envs", "0", "--num_workers", "0", "--swad", "False"]


class _Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _craft(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"sha256": "0", "content": {"meta": _Payload(marker), "model_dict": {}}}, path)


def _one_line(error):
    assert "\n" not in str(error)


@pytest.fixture
def finished_run(tmp_path):
    result = train_all.run(["safe", *FAST, "--output_dir", str(tmp_path / "out")])
    return result["out_dir"]


def test_crafted_model_file_is_refused_by_the_ensemble_and_flatness_tools(finished_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    _craft(finished_run / "models" / "TE0_final.pth", marker)
    assert ensemble.main([str(finished_run), "--device", "cpu", "--num_workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: refused model file") and "could run code" in err and "\n" not in err
    assert flatness.main([str(finished_run), "--radii", "0", "--n_directions", "1", "--device", "cpu",
                          "--num_workers", "0", "--out", str(tmp_path / "f")]) == 2
    assert "refused model file" in capsys.readouterr().err
    assert not marker.exists()


def test_a_raw_pickle_is_refused_by_the_tools_in_one_line_and_nothing_else(finished_run, tmp_path):
    """Warnings go to stderr outside pytest only: the tools run as a user runs them."""
    import pickle
    import subprocess
    import sys

    (finished_run / "models" / "TE0_final.pth").write_bytes(pickle.dumps({"meta": {}}, protocol=4))
    for tool, extra in (("ensemble", []), ("flatness", ["--radii", "0", "--n_directions", "1", "--out",
                                                        str(tmp_path / "f")])):
        result = subprocess.run([sys.executable, "-m", f"domainbed.scripts.{tool}", str(finished_run), "--device",
                                 "cpu", "--num_workers", "0", *extra], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: refused model file") and "could run code" in line


def test_crafted_compact_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _craft(tmp_path / "compact.pth", marker)
    with pytest.raises(UsageError, match="refused compact model file") as error:
        compact.load_compact(tmp_path / "compact.pth")
    _one_line(error.value)
    assert not marker.exists()


def test_crafted_pretrained_weights_are_refused_in_one_line(tmp_path):
    """`--pretrained_path` is loaded when the run checks its model, before its directory exists."""
    from torchvision.models import ResNet18_Weights

    from domainbed.networks.pretrained import load_pretrained_state

    marker, path = tmp_path / "pwned", tmp_path / "weights.pth"
    torch.save({"fc.weight": _Payload(marker)}, path)
    with pytest.raises(UsageError, match="refused pretrained_path of resnet18 .* could run code .*GLOBAL posix.system") as error:
        load_pretrained_state(ResNet18_Weights.IMAGENET1K_V1, "resnet18", {"pretrained_path": str(path)})
    _one_line(error.value)
    assert not marker.exists()


def test_a_crafted_pretrained_path_stops_the_launch_before_its_run_directory_exists(tmp_path, capsys):
    from PIL import Image

    for domain in ["art_painting", "cartoon", "photo", "sketch"]:
        (tmp_path / "PACS" / domain / "dog").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "PACS" / domain / "dog" / "1.png")
    marker, weights = tmp_path / "pwned", tmp_path / "weights.pth"
    torch.save({"fc.weight": _Payload(marker)}, weights)
    out = tmp_path / "out"
    assert train_all.main(["crafted", "--dataset", "PACS", "--data_dir", str(tmp_path), "--backbone", "resnet18",
                           "--pretrained_path", str(weights), "--image_size", "16", "--output_dir", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: refused pretrained_path of resnet18") and "could run code" in line
    assert not out.exists() and not marker.exists()


def test_crafted_checkpoint_is_refused_on_resume(tmp_path, capsys):
    out = tmp_path / "out"
    train_all.run(["safe", *FAST, "--output_dir", str(out), "--steps", "2"])
    (run_dir,) = (out / "Synthetic").iterdir()
    (run_dir / "resume" / "TE0_done.json").unlink()
    marker = tmp_path / "pwned"
    _craft(checkpoint.checkpoint_path(run_dir, [0], 2), marker)
    assert train_all.main(["safe", *FAST, "--output_dir", str(out), "--steps", "2", "--resume"]) == 0
    assert not marker.exists()
    log = (run_dir / "log.txt").read_text()
    assert "warning: refused checkpoint" in log and "the fold starts from step 0" in log
    assert (run_dir / "resume" / "TE0_step2.pth.damaged").is_file()


def test_checksums_catch_a_flipped_bit(tmp_path):
    path = tmp_path / "m.pth"
    persistence.save({"w": torch.arange(1000, dtype=torch.float32), "step": 3}, path)
    assert persistence.load(path)["step"] == 3
    data = bytearray(path.read_bytes())
    # a byte inside the tensor's storage: the zip entry still reads, the checksum does not match
    offset = data.find(torch.arange(1000, dtype=torch.float32).numpy().tobytes()[400:416])
    assert offset > 0
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(persistence.DamagedFile, match="fails its checksum") as error:
        persistence.load(path)
    _one_line(error.value)


def test_a_file_without_checksum_or_weights_is_refused(tmp_path, finished_run):
    plain = tmp_path / "plain.pth"
    torch.save({"meta": {}, "model_dict": {}}, plain)
    with pytest.raises(UsageError, match="carries no checksum"):
        persistence.load(plain)
    empty = tmp_path / "empty.pth"
    meta = model_io.read_meta(finished_run / "models" / "TE0_final.pth")
    persistence.save({"meta": meta, "model_dict": {}}, empty)
    with pytest.raises(UsageError, match="holds no weights"):
        model_io.load_model(empty)
    partial = tmp_path / "partial.pth"
    state = persistence.load(finished_run / "models" / "TE0_final.pth")
    state["model_dict"].pop(next(iter(state["model_dict"])))
    persistence.save(state, partial)
    with pytest.raises(UsageError, match="does not fit its ERM model: Error"):
        model_io.load_model(partial)


def test_resume_falls_back_to_the_older_checkpoint_when_the_newest_is_damaged(tmp_path):
    for step in (2, 4):
        persistence.save({"step": step}, checkpoint.checkpoint_path(tmp_path, [0], step))
    newest = checkpoint.checkpoint_path(tmp_path, [0], 4)
    newest.write_bytes(newest.read_bytes()[:-200])  # a truncated copy, as a full disk leaves one
    said = []
    state = checkpoint._load_latest(tmp_path, [0], log=said.append)
    assert state["step"] == 2 and state["path"] == checkpoint.checkpoint_path(tmp_path, [0], 2)
    assert len(said) == 1 and "falling back to the checkpoint of step 2" in said[0]
    assert newest.with_name(newest.name + ".damaged").is_file() and not newest.exists()


@pytest.mark.parametrize("name", ["", "..", ".", "a/b", "../escape"])
def test_run_names_are_single_folder_names(tmp_path, capsys, name):
    assert train_all.main([name, *FAST, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run name") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_failed_launch_leaves_no_directory_and_resume_refuses_a_directory_without_settings(tmp_path, capsys):
    out = tmp_path / "out"
    assert train_all.main(["x", "--dataset", "PACS", "--data_dir", str(tmp_path / "none"), "--output_dir",
                           str(out)]) == 2
    assert "data directory" in capsys.readouterr().err and not out.exists()
    broken = out / "Synthetic" / "261203_10-00-00_x"
    broken.mkdir(parents=True)
    (broken / "args.json").write_text("{}")
    assert train_all.main(["x", *FAST, "--output_dir", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a resumable run directory (no hparams.json)" in err and "\n" not in err
    assert train_all.main(["x", *FAST, "--output_dir", str(out), "--resume", str(tmp_path)]) == 2
    assert "no args.json or hparams.json" in capsys.readouterr().err


def test_a_locked_run_writes_nothing_into_the_other_runs_log(tmp_path, capsys):
    from domainbed.runs.run_dir import RunLock

    out = tmp_path / "out"
    train_all.run(["lock", *FAST, "--output_dir", str(out), "--steps", "2"])
    (run_dir,) = (out / "Synthetic").iterdir()
    before = (run_dir / "log.txt").read_text()
    capsys.readouterr()
    with RunLock(run_dir):
        assert train_all.main(["lock", *FAST, "--output_dir", str(out), "--steps", "2", "--resume"]) == 2
    err = capsys.readouterr()
    assert "is in use by another process" in err.err and err.err.count("error:") == 1
    assert "error" not in err.out
    assert (run_dir / "log.txt").read_text() == before


def test_errors_are_printed_once(tmp_path, capsys):
    assert train_all.main(["once", *FAST, "--output_dir", str(tmp_path / "out"), "--holdout_fraction", "1.5"]) == 2
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("error:") == 1


def test_ctrl_c_prints_the_run_and_the_command_that_resumes_it(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "train_fold", interrupt)
    assert train_all.main(["ctrl", *FAST, "--output_dir", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    (run_dir,) = (tmp_path / "out" / "Synthetic").iterdir()
    assert f"interrupted: {run_dir} holds the records" in err
    assert "python train_all.py ctrl --dataset Synthetic" in err and err.strip().endswith(f"--resume {run_dir}")


def test_a_full_disk_is_one_line_and_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    import errno

    from domainbed import misc

    out = tmp_path / "out"
    train_all.run(["disk", *FAST, "--output_dir", str(out), "--steps", "2"])
    (run_dir,) = (out / "Synthetic").iterdir()
    before = (run_dir / "results.jsonl").read_text()
    (run_dir / "resume" / "TE0_done.json").unlink()

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(misc, "atomic_open", full)
    assert train_all.main(["disk", *FAST, "--output_dir", str(out), "--steps", "2", "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "\n" not in err and "--resume" in err
    assert (run_dir / "results.jsonl").read_text() == before
