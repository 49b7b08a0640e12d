"""DomainBed's datasets that PACS-style folders do not cover: Debug28/Debug224, SVIRO and the six
Spawrious sets, each built from a small generated tree in its published layout, with DomainBed's
environments and classes, trained a few steps, and installed by the downloader from a mirror."""

import io
import zipfile

import pytest
import torch
from PIL import Image

from domainbed.datasets import get_dataset_class, spawrious
from domainbed.download import catalog
from domainbed.download.install import install
from domainbed.download.verify import check, unreadable_images
from domainbed.errors import UsageError
from test_download import tar_bytes

SVIRO_VEHICLES = ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"]
SPAWRIOUS = ["SpawriousO2O_easy", "SpawriousO2O_medium", "SpawriousO2O_hard",
             "SpawriousM2M_easy", "SpawriousM2M_medium", "SpawriousM2M_hard"]

HPARAMS = {"image_size": 32, "data_augmentation": True}
TINY = ("--steps", "2", "--checkpoint_freq", "1", "--batch_size", "4", "--image_size", "32",
        "--pretrained", "False", "--backbone", "resnet18", "--test_envs", "0", "--num_workers", "0", "--swad", "False")


@pytest.mark.parametrize("name, shape", [("Debug28", (3, 28, 28)), ("Debug224", (3, 224, 224))])
def test_debug_datasets_have_domainbed_shapes_and_are_fixed(name, shape):
    cls = get_dataset_class(name)
    assert cls.GENERATED
    first, second = cls(None, [0], HPARAMS), cls(None, [0], HPARAMS)
    assert first.environments == ["0", "1", "2"] and len(first) == 3
    assert first.input_shape == shape and first.num_classes == 2
    for env in range(3):
        x, y = first[env].tensors
        assert x.shape == (16, *shape) and set(y.tolist()) <= {0, 1}
        assert torch.equal(x, second[env].tensors[0]) and torch.equal(y, second[env].tensors[1])


def test_debug28_trains(run_train_all):
    result = run_train_all("debug", "--dataset", "Debug28", *TINY)
    assert result["environments"] == ["0"] and 0.0 <= result["rows"]["last"]["0"] <= 1.0


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 37 % 256, 80, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def sviro_members(root="sviro", classes=("adult", "empty"), per_class=2) -> dict:
    return {f"{root}/{vehicle}/{name}/{i}.png": png_bytes(i)
            for vehicle in SVIRO_VEHICLES for name in classes for i in range(per_class)}


def spawrious_members(root=spawrious.DIRECTORY, per_folder=2) -> dict:
    return {f"{root}/{image_set}/{location}/{breed}/{i}.png": png_bytes(i)
            for image_set in ("0", "1") for location in spawrious.LOCATIONS for breed in spawrious.BREEDS
            for i in range(per_folder)}


def write_tree(base, members: dict):
    for name, data in members.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return base


def test_sviro_has_domainbed_environments_and_reads_its_folder(tmp_path):
    dataset = get_dataset_class("SVIRO")(write_tree(tmp_path, sviro_members()), [0], HPARAMS)
    assert dataset.environments == SVIRO_VEHICLES and get_dataset_class("SVIRO").ENVIRONMENTS == SVIRO_VEHICLES
    assert dataset.classes == ["adult", "empty"] and [len(env) for env in dataset] == [4] * 10
    (tmp_path / "sviro" / "zoe" / "adult" / "0.png").unlink()
    (tmp_path / "sviro" / "zoe" / "adult" / "1.png").unlink()
    with pytest.raises(UsageError, match="zoe/adult has no images"):
        get_dataset_class("SVIRO")(tmp_path, [0], HPARAMS)


def test_sviro_trains(run_train_all, tmp_path):
    write_tree(tmp_path / "data", sviro_members(per_class=3))  # 6 per domain: a non-empty holdout
    result = run_train_all("sviro", "--dataset", "SVIRO", "--data_dir", tmp_path / "data", *TINY)
    assert result["environments"] == ["aclass"] and 0.0 <= result["rows"]["last"]["aclass"] <= 1.0


def picks(name):
    return [[(s, loc, breed) for s, loc, breed, _ in env] for env in get_dataset_class(name).PICKS]


def test_spawrious_environments_follow_domainbed():
    for name in SPAWRIOUS:
        cls = get_dataset_class(name)
        assert cls.ENVIRONMENTS == ["Test", "SC_group_1", "SC_group_2"] and cls.num_classes == 4
    # O2O easy: bulldog-desert, dachshund-jungle, labrador-dirt, corgi-snow, filler beach; set e is env e
    test, first, second = get_dataset_class("SpawriousO2O_easy").PICKS
    assert first[:4] == [("0", "desert", "bulldog", 3072), ("0", "jungle", "dachshund", 3072),
                         ("0", "dirt", "labrador", 3072), ("0", "snow", "corgi", 3072)]
    assert first[4:] == [("0", "beach", breed, 96) for breed in ("bulldog", "dachshund", "labrador", "corgi")]
    assert second[0] == ("1", "desert", "bulldog", 2756) and second[4] == ("1", "beach", "bulldog", 412)
    assert test == [(s, loc, breed, None) for s in ("0", "1") for loc, breed in
                    [("dirt", "bulldog"), ("snow", "dachshund"), ("desert", "labrador"), ("jungle", "corgi")]]
    # M2M hard: groups (dirt, jungle) and (snow, beach) swap between environments; image set 0 only
    assert picks("SpawriousM2M_hard") == [
        [("0", "snow", "bulldog"), ("0", "beach", "dachshund"), ("0", "dirt", "labrador"), ("0", "jungle", "corgi"),
         ("0", "beach", "bulldog"), ("0", "snow", "dachshund"), ("0", "jungle", "labrador"), ("0", "dirt", "corgi")],
        [("0", "dirt", "bulldog"), ("0", "jungle", "dachshund"), ("0", "snow", "labrador"), ("0", "beach", "corgi")],
        [("0", "jungle", "bulldog"), ("0", "dirt", "dachshund"), ("0", "beach", "labrador"), ("0", "snow", "corgi")],
    ]
    assert {limit for env in get_dataset_class("SpawriousM2M_easy").PICKS[1:] for *_, limit in env} == {3168}


def test_spawrious_reads_its_tree_with_labels_and_limits(tmp_path, monkeypatch):
    write_tree(tmp_path, spawrious_members(per_folder=3))
    dataset = get_dataset_class("SpawriousO2O_easy")(tmp_path, [0], HPARAMS)
    assert dataset.classes == ["bulldog", "corgi", "dachshund", "labrador"]
    assert [len(env) for env in dataset] == [24, 24, 24]
    image, label = dataset[1][0]
    assert image.size == (8, 8) and label == 0  # bulldog in the desert
    assert dataset.datasets[1].samples[0][0] == tmp_path / "spawrious224/0/desert/bulldog/0.png"
    # a limit keeps the first images by name
    few = spawrious.Picks(tmp_path / "spawrious224", [("1", "snow", "corgi", 2)])
    assert [path.name for path, _ in few.samples] == ["0.png", "1.png"] and few.targets == [1, 1]
    with pytest.raises(UsageError, match="spawrious224/1/snow/pug does not exist"):
        spawrious.Picks(tmp_path / "spawrious224", [("1", "snow", "pug", None)])
    with pytest.raises(UsageError, match="--datasets Spawrious"):
        get_dataset_class("SpawriousM2M_easy")(tmp_path / "elsewhere", [0], HPARAMS)


def test_spawrious_trains(run_train_all, tmp_path):
    write_tree(tmp_path / "data", spawrious_members())
    result = run_train_all("spawrious", "--dataset", "SpawriousM2M_hard", "--data_dir", tmp_path / "data", *TINY)
    assert result["environments"] == ["Test"] and 0.0 <= result["rows"]["last"]["Test"] <= 1.0




def test_downloader_installs_spawrious_from_a_mirror_and_verify_knows_its_layout(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "spawrious224.tar.gz").write_bytes(tar_bytes(spawrious_members()))
    outcome = install(catalog.DATASETS["Spawrious"], tmp_path / "data", mirror=str(mirror), log=lambda _: None)
    assert outcome.status == "installed" and outcome.report.complete
    assert len(get_dataset_class("SpawriousO2O_hard")(tmp_path / "data", [0], HPARAMS)[0]) == 16
    folder = tmp_path / "data" / spawrious.DIRECTORY
    assert unreadable_images(folder, "Spawrious", list(catalog.LAYOUTS["Spawrious"].domain_counts)) == (96, [])
    for image in (folder / "1" / "snow" / "corgi").iterdir():
        image.unlink()
    (folder / "1" / "snow" / "corgi").rmdir()
    (folder / "2").mkdir()
    report = check("Spawrious", catalog.LAYOUTS["Spawrious"], folder)
    assert not report.complete
    assert any("1/snow/corgi: class folder missing" in problem for problem in report.layout_problems)
    assert any("unexpected folder" in problem and problem.endswith("2: unexpected folder (not a domain of Spawrious)")
               for problem in report.layout_problems)


def test_downloader_installs_sviro_from_its_archive_layout(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in sviro_members("SVIRO_DOMAINBED").items():
            archive.writestr(name, data)
    (mirror / "sviro_grayscale_rectangle_classification.zip").write_bytes(buffer.getvalue())
    outcome = install(catalog.DATASETS["SVIRO"], tmp_path / "data", mirror=str(mirror), log=lambda _: None)
    assert outcome.status == "installed" and outcome.report.complete
    assert outcome.report.counts == {vehicle: 4 for vehicle in SVIRO_VEHICLES}
    assert get_dataset_class("SVIRO")(tmp_path / "data", [0], HPARAMS).environments == SVIRO_VEHICLES
