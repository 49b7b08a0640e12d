"""`--verify`: the real data checks out; small copies with a missing, an extra, a corrupted image
(and broken folders, broken MNIST files) are reported and fail the run."""

import gzip
import hashlib
import shutil

import pytest
from PIL import Image

from domainbed.download import catalog
from domainbed.download.spec import Dataset, IdxFile, IdxLayout, ImageFolderLayout
from domainbed.download.verify import check, render
from domainbed.scripts.download import main

MINI = ImageFolderLayout("Mini", {"art_painting": 4, "photo": 4}, classes=("dog", "horse"),
                         class_counts={"art_painting": {"dog": 2, "horse": 2}, "photo": {"dog": 2, "horse": 2}})


def make_mini(root):
    for domain in MINI.domain_counts:
        for label, name in enumerate(MINI.classes):
            (root / domain / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (60 * label, 30 * i, 90)).save(root / domain / name / f"{i}.jpg")
    return root


@pytest.fixture
def mini_dataset(monkeypatch):
    monkeypatch.setitem(catalog.DATASETS, "Mini", Dataset("Mini", MINI, (), lambda archives, work: work))


def test_shared_data_reports_pacs_and_mnist_complete(shared_data, mnist_data, capsys):
    assert main(["--data_dir", str(shared_data), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "complete: PACS, MNIST" in out
    for name in ("VLCS", "OfficeHome", "TerraIncognita", "DomainNet"):
        assert any(line.split("|")[1].strip() == name and "absent" in line for line in out.splitlines()
                   if line.startswith("|"))


def test_a_requested_absent_dataset_fails(shared_data, capsys):
    assert main(["--data_dir", str(shared_data), "--verify", "--datasets", "VLCS"]) == 1
    assert "not complete: VLCS" in capsys.readouterr().out


def test_an_empty_data_dir_is_not_a_success(tmp_path, capsys):
    assert main(["--data_dir", str(tmp_path), "--verify"]) == 1
    assert "no dataset found" in capsys.readouterr().out


def test_bad_arguments_are_one_line_usage_errors(tmp_path, capsys):
    assert main(["--data_dir", str(tmp_path), "--verify", "--datasets", "PAC"]) == 2
    assert "unknown dataset 'PAC'; valid: PACS, VLCS" in capsys.readouterr().err
    assert main(["--data_dir", str(tmp_path / "nope"), "--verify"]) == 2
    assert main(["--data_dir", str(tmp_path), "--mirror", str(tmp_path / "nope")]) == 2


def test_copy_with_a_missing_an_extra_and_a_corrupted_image(tmp_path, mini_dataset, capsys):
    root = make_mini(tmp_path / "Mini")
    assert check("Mini", MINI, root).complete
    (root / "photo" / "dog" / "1.jpg").unlink()
    shutil.copyfile(root / "photo" / "dog" / "0.jpg", root / "photo" / "horse" / "extra.jpg")
    corrupted = root / "art_painting" / "horse" / "0.jpg"
    corrupted.write_bytes(corrupted.read_bytes()[: corrupted.stat().st_size // 2])
    (root / "art_painting" / "dog" / "notes.txt").write_text("not an image")

    report = check("Mini", MINI, root)
    assert report.status == "incomplete"
    rows = {row.domain: (row.found, row.missing, row.extra, row.unreadable) for row in report.rows}
    assert rows == {"art_painting": (4, 0, 0, 1), "photo": (4, 1, 1, 0)}
    assert report.ignored == 1
    text = "\n".join(report.problems)
    assert f"{root / 'photo' / 'dog'}: 1 images, published 2 (1 missing)" in text
    assert f"{root / 'photo' / 'horse'}: 3 images, published 2 (1 extra)" in text
    assert str(corrupted) in text

    assert main(["--data_dir", str(tmp_path), "--verify", "--datasets", "Mini"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "incomplete" in out and "not complete: Mini" in out
    assert "1 files that are not images" in out


def test_folder_problems_are_named(tmp_path):
    root = make_mini(tmp_path / "Mini")
    shutil.rmtree(root / "photo" / "horse")
    (root / "photo" / "cat").mkdir()
    (root / "sketch").mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    report = check("Mini", MINI, root)
    assert report.layout_problems == [
        f"{root / 'sketch'}: unexpected folder (not a domain of Mini)",
        f"{root / 'photo' / 'horse'}: class folder missing",
        f"{root / 'photo' / 'cat'}: unexpected class folder (the loader would read it as a class)",
        f"{root / 'photo' / 'cat'}: no images (the loader refuses an empty class)",
    ]
    shutil.rmtree(root / "photo")
    assert f"{root / 'photo'}: domain folder missing" in check("Mini", MINI, root).layout_problems


def test_when_only_the_number_of_classes_is_published(tmp_path):
    layout = ImageFolderLayout("Mini", {"art_painting": 4, "photo": 4}, classes=3)
    root = make_mini(tmp_path / "Mini")
    report = check("Mini", layout, root)
    assert report.layout_problems == [f"{root / 'art_painting'}: 2 class folders, published: 3"]


def test_mnist_copy_with_missing_corrupted_and_altered_files(tmp_path):
    def idx(magic, n, rows):
        """An IDX file of n items; magic 0x803 makes them rows x rows images, 0x801 labels."""
        dims = [n, rows, rows] if magic == 0x803 else [n]
        return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + bytes(n * rows * rows)

    files = {"imgs": idx(0x803, 3, 1), "labels": idx(0x801, 3, 1), "more": idx(0x801, 3, 1)}
    layout = IdxLayout("MNIST", tuple(IdxFile(name, 3, hashlib.md5(data).hexdigest())
                                      for name, data in files.items()))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "imgs.gz").write_bytes(gzip.compress(files["imgs"])[:-6])
    (raw / "labels").write_bytes(files["labels"][:-1] + b"\x07")
    report = check("MNIST", layout, tmp_path / "MNIST")
    assert [(r.domain, r.found, r.missing, r.unreadable) for r in report.rows] == [
        ("imgs", None, 0, 1), ("labels", 3, 0, 1), ("more", None, 3, 0)]
    assert any("imgs.gz" in p for p in report.problems) and any("published" in p for p in report.problems)
    assert "more(.gz): missing" in render([report])
