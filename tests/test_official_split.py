"""The official PACS split: the indices are exactly the listed files; a missing list or a
listed image absent from the data is a one-line error naming it."""

import pytest
from PIL import Image

from domainbed.datasets import get_dataset_class
from domainbed.datasets.image_folder import DomainFolder
from domainbed.datasets.official_split import official_split
from domainbed.errors import UsageError


def _count_lines(path):
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_counts_equal_the_lists_on_real_pacs(shared_data):
    split_dir = shared_data / "PACS_splits"
    if not split_dir.is_dir():
        pytest.skip(f"{split_dir} not found")
    dataset = get_dataset_class("PACS")(shared_data, [], {"image_size": 32, "data_augmentation": False})
    for domain, environment in zip(dataset.domain_dirs, dataset):
        train, val = official_split(environment, domain, split_dir)
        assert len(train) == _count_lines(split_dir / f"{domain}_train_kfold.txt")
        assert len(val) == _count_lines(split_dir / f"{domain}_crossval_kfold.txt")
        assert not set(train) & set(val) and len(set(train)) == len(train)
        first = (split_dir / f"{domain}_train_kfold.txt").read_text().split()[0]
        assert environment.samples[train[0]][0].as_posix().endswith(first)


@pytest.fixture
def tiny_domain(tmp_path):
    for label in ("dog", "horse"):
        (tmp_path / "data" / "photo" / label).mkdir(parents=True)
        for index in range(3):
            Image.new("RGB", (4, 4)).save(tmp_path / "data" / "photo" / label / f"pic_{index}.jpg")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "photo_train_kfold.txt").write_text("photo/horse/pic_2.jpg 2\nphoto/dog/pic_0.jpg 1\n")
    (splits / "photo_crossval_kfold.txt").write_text("photo/dog/pic_1.jpg 1\n")
    return DomainFolder(tmp_path / "data" / "photo", ["dog", "horse"]), splits


def test_listed_paths_map_to_their_items(tiny_domain):
    environment, splits = tiny_domain
    train, val = official_split(environment, "photo", splits)
    assert [environment.samples[i][0].name for i in train] == ["pic_2.jpg", "pic_0.jpg"]
    assert [environment[i][1] for i in train] == [1, 0]
    assert [environment.samples[i][0].as_posix()[-13:] for i in val] == ["dog/pic_1.jpg"]


def _damage(splits, name, text):
    if text is None:
        (splits / name).unlink()
    else:
        (splits / name).write_text(text)


@pytest.mark.parametrize("name,text,message", [
    ("photo_crossval_kfold.txt", None, "photo_crossval_kfold.txt does not exist"),
    ("photo_train_kfold.txt", "photo/dog/pic_0.jpg 1\nphoto/cat/pic_9.jpg 3\n", "first: photo/cat/pic_9.jpg"),
], ids=["missing list", "listed image absent from the folder"])
def test_bad_lists_are_one_line_errors(tiny_domain, name, text, message):
    environment, splits = tiny_domain
    _damage(splits, name, text)
    with pytest.raises(UsageError, match=message) as caught:
        official_split(environment, "photo", splits)
    assert "\n" not in str(caught.value)


def test_malformed_line_is_one_line_error(tiny_domain):
    environment, splits = tiny_domain
    (splits / "photo_train_kfold.txt").write_text("photo/dog/pic_0.jpg\n")
    with pytest.raises(UsageError, match="line 1"):
        official_split(environment, "photo", splits)
