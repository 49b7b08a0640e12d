"""Your own data (`--dataset ImageFolder`): found from the dataset folder or its parent, titled by
its folder in the output directory and collect_results, and clear errors for an empty domain and
a corrupt image."""

import json

import pytest
from PIL import Image

from domainbed.datasets import get_dataset_class
from domainbed.errors import UsageError
from domainbed.scripts import collect_results

HP = {"image_size": 8, "data_augmentation": False}


def _shapes(data, name="shapes", domains=("blue", "green"), classes=("circle", "square")):
    """DATA/<name>/<domain>/<class>/<image>; returns the dataset folder."""
    for domain in domains:
        for label in classes:
            folder = data / name / domain / label
            folder.mkdir(parents=True)
            for index in range(3):
                Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(folder / f"{index}.png")
    return data / name


def test_data_dir_is_the_dataset_folder_or_its_parent(tmp_path):
    folder = _shapes(tmp_path / "data")
    image_folder = get_dataset_class("ImageFolder")
    for data_dir in (folder, tmp_path / "data"):
        dataset = image_folder(data_dir, [], HP)
        assert dataset.environments == ["blue", "green"] and dataset.classes == ["circle", "square"]
        assert image_folder.title("ImageFolder", data_dir) == "shapes"
    assert get_dataset_class("PACS").title("PACS", tmp_path) == "PACS"


def test_a_parent_of_several_datasets_asks_for_one(tmp_path):
    _shapes(tmp_path / "data")
    _shapes(tmp_path / "data", name="letters")
    with pytest.raises(UsageError, match=r"holds several datasets \(letters, shapes\); name the one to train on, "
                                         r"e.g. --data_dir .*data/letters$"):
        get_dataset_class("ImageFolder")(tmp_path / "data", [], HP)


def test_an_empty_domain_says_it_has_no_class_folders_and_what_is_expected(tmp_path):
    folder = _shapes(tmp_path / "data", domains=("green",))
    (folder / "blue").mkdir()
    with pytest.raises(UsageError) as caught:
        get_dataset_class("ImageFolder")(folder, [], HP)
    assert str(caught.value) == (f"domain folder {folder / 'blue'} has no class folders; expected one folder per "
                                 "class (circle, square) holding its images")

    Image.new("RGB", (8, 8)).save(folder / "blue" / "0.png")
    with pytest.raises(UsageError, match=r"blue has images but no class folders; expected one folder per class"):
        get_dataset_class("ImageFolder")(folder, [], HP)


def test_a_corrupt_image_error_hints_skip_bad_images(tmp_path):
    folder = _shapes(tmp_path / "data")
    (folder / "green" / "square" / "0.png").write_bytes(b"not an image")
    dataset = get_dataset_class("ImageFolder")(folder, [], HP)
    with pytest.raises(UsageError, match=r"cannot read image .*0\.png: .*; --skip_bad_images True leaves "
                                         "unreadable images out"):
        dataset[1][3]


def test_the_folder_name_titles_the_output_and_collect_results(run_train_all, tmp_path, capsys):
    _shapes(tmp_path / "data")
    result = run_train_all("mine", "--dataset", "ImageFolder", "--data_dir", tmp_path / "data",
                           "--steps", "1", "--checkpoint_freq", "1", "--num_workers", "0", "--swad", "False",
                           "--backbone", "resnet18", "--pretrained", "False", "--image_size", "32",
                           "--batch_size", "4", "--tb_freq", "0")
    run_dir = result["out_dir"]
    assert run_dir.parent == tmp_path / "out" / "shapes"
    args = json.loads((run_dir / "args.json").read_text())
    assert args["dataset"] == "ImageFolder" and args["dataset_title"] == "shapes"  # the name rebuilds the data

    capsys.readouterr()
    assert collect_results.main([str(tmp_path / "out")]) == 0
    report = capsys.readouterr().out
    assert "shapes" in report and "ImageFolder" not in report
