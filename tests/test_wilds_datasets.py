"""DomainBed's WILDSCamelyon and WILDSFMoW: small generated trees in WILDS' published layouts load
with DomainBed's environments and classes, train a few steps, and are installed by the
downloader from a mirror and checked by --verify."""

import dataclasses
import io

import pytest
from PIL import Image

from domainbed.datasets import get_dataset_class
from domainbed.download import catalog
from domainbed.download.install import install
from domainbed.download.verify import check
from domainbed.errors import UsageError
from domainbed.scripts import download
from test_domainbed_datasets import write_tree
from test_download import tar_bytes

HPARAMS = {"image_size": 32, "data_augmentation": True}
TINY = ("--steps", "2", "--checkpoint_freq", "1", "--batch_size", "4", "--image_size", "32",
        "--pretrained", "False", "--backbone", "resnet18", "--test_envs", "0", "--num_workers", "0", "--swad", "False")
# (country code, region in country_code_mapping.csv); a code the mapping lacks is WILDS' "Other"
COUNTRIES = [("CHN", "Asia"), ("FRA", "Europe"), ("KEN", "Africa"), ("USA", "Americas"), ("AUS", "Oceania"),
             ("ZZZ", None)]
FMOW_SPLITS = [("train", "2012-03-04T10:00:00Z"), ("val", "2014-05-06T10:00:00Z"), ("test", "2017-01-02T10:00:00Z"),
               ("seq", "2013-01-01T10:00:00Z")]


def png_bytes(seed: int, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, 80, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def camelyon_members(root="camelyon17_v1.0", per_hospital=4) -> dict:
    """WILDS' Camelyon17 v1.0: metadata.csv (pandas' index column first), 96 px patches."""
    members = {f"{root}/RELEASE_v1.0.txt": b"v1.0\n"}
    lines = [",patient,node,x_coord,y_coord,tumor,slide,center,split"]
    for n in range(5 * per_hospital):
        center, k = divmod(n, per_hospital)
        patient, node, x, y = f"{center * 10 + k // 2:03d}", k % 2, 100 * k, 200 * k
        lines.append(f"{n},{patient},{node},{x},{y},{k % 2},{center * 10 + k // 2},{center},{k % 2}")
        members[f"{root}/patches/patient_{patient}_node_{node}/patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png"] = \
            png_bytes(n, 96)
    members[f"{root}/metadata.csv"] = ("\n".join(lines) + "\n").encode()
    return members


def fmow_members(root="fmow_v1.1", per_region=4) -> dict:
    """WILDS' FMoW v1.1: rgb_metadata.csv, country_code_mapping.csv, images/rgb_img_<row>.png
    (none for `seq` rows, which WILDS never reads)."""
    members = {f"{root}/RELEASE_v1.1.txt": b"v1.1\n",
               f"{root}/country_code_mapping.csv": ("name,alpha-2,alpha-3,region\n" + "".join(
                   f"c{code},{code[:2]},{code},{region}\n" for code, region in COUNTRIES if region)).encode()}
    lines = ["split,img_filename,img_path,spatial_reference,epsg,category,visible,img_width,img_height,"
             "country_code,cloud_cover,timestamp,lat,lon"]
    for i in range(per_region * len(COUNTRIES)):
        (code, _), (split, timestamp) = COUNTRIES[i % len(COUNTRIES)], FMOW_SPLITS[i // len(COUNTRIES) % 4]
        category = ("airport", "zoo", "airport_hangar")[i % 3]
        lines.append(f"{split},f{i}.jpg,p{i},ref,4326,{category},True,224,224,{code},0,{timestamp},0.0,0.0")
        if split != "seq":
            members[f"{root}/images/rgb_img_{i}.png"] = png_bytes(i, 24)
    members[f"{root}/rgb_metadata.csv"] = ("\n".join(lines) + "\n").encode()
    return members






def test_camelyon_has_domainbeds_hospitals_and_classes(tmp_path):
    dataset = get_dataset_class("WILDSCamelyon")(write_tree(tmp_path, camelyon_members()), [0], HPARAMS)
    assert dataset.environments == ["hospital_0", "hospital_1", "hospital_2", "hospital_3", "hospital_4"]
    assert dataset.num_classes == 2 and dataset.classes == ["normal", "tumor"] and dataset.input_shape == (3, 32, 32)
    assert [len(env) for env in dataset] == [4] * 5
    image, label = dataset[3][1]  # hospital 3's second patch: node 1, a tumour
    assert image.size == (96, 96) and image.mode == "RGB" and label == 1
    assert image.getpixel((0, 0))[0] == (3 * 4 + 1) * 37 % 256
    (tmp_path / "camelyon17_v1.0" / "RELEASE_v1.0.txt").unlink()
    with pytest.raises(UsageError, match="not a whole WILDS release"):
        get_dataset_class("WILDSCamelyon")(tmp_path, [0], HPARAMS)
    with pytest.raises(UsageError, match="--datasets WILDSCamelyon fetches it"):
        get_dataset_class("WILDSCamelyon")(tmp_path / "elsewhere", [0], HPARAMS)


def test_a_release_without_every_hospital_is_refused(tmp_path):
    members = camelyon_members()
    lines = members["camelyon17_v1.0/metadata.csv"].decode().splitlines()
    members["camelyon17_v1.0/metadata.csv"] = "\n".join(line for line in lines if not line.endswith(",4,0")
                                                         and not line.endswith(",4,1")).encode()
    with pytest.raises(UsageError, match="has the environments hospital_0, hospital_1, hospital_2, hospital_3;"):
        get_dataset_class("WILDSCamelyon")(write_tree(tmp_path, members), [0], HPARAMS)


def test_fmow_has_domainbeds_regions_and_classes(tmp_path):
    dataset = get_dataset_class("WILDSFMoW")(write_tree(tmp_path, fmow_members()), [0], HPARAMS)
    assert dataset.environments == [f"region_{i}" for i in range(6)] and dataset.num_classes == 62
    assert dataset.classes[:2] == ["airport", "airport_hangar"] and len(dataset.classes) == 62
    assert [len(env) for env in dataset] == [3] * 6  # the fourth image of each region is `seq`
    # regions are numbered in the order the metadata first names them: row i is region i % 6
    image, label = dataset[5][1]
    assert image.size == (24, 24) and label == dataset.classes.index(("airport", "zoo", "airport_hangar")[11 % 3])
    assert image.getpixel((0, 0))[0] == 11 * 37 % 256


@pytest.mark.parametrize("name, members, test_env", [("WILDSCamelyon", camelyon_members, "hospital_0"),
                                                     ("WILDSFMoW", fmow_members, "region_0")])
def test_wilds_datasets_train(run_train_all, tmp_path, name, members, test_env):
    write_tree(tmp_path / "data", members(per_hospital=6) if name == "WILDSCamelyon" else members(per_region=8))
    result = run_train_all(name.lower(), "--dataset", name, "--data_dir", tmp_path / "data", *TINY)
    assert result["environments"] == [test_env] and 0.0 <= result["rows"]["last"][test_env] <= 1.0


@pytest.mark.parametrize("name, members", [("WILDSCamelyon", camelyon_members), ("WILDSFMoW", fmow_members)])
def test_downloader_installs_a_wilds_release_and_verify_knows_its_layout(tmp_path, capsys, name, members):
    layout = catalog.LAYOUTS[name]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    # WILDS' archives hold the folder's contents, which the wilds package extracts into the folder
    contents = {key.split("/", 1)[1]: data for key, data in members(root=layout.directory).items()}
    (source,) = catalog.SOURCES[name]
    (mirror / source.filename).write_bytes(tar_bytes(contents))
    published = catalog.DATASETS[name]
    failed = install(published, tmp_path / "data", mirror=str(mirror), log=lambda _: None)
    assert failed.status == "failed" and str(source.size) in failed.message  # the published size is checked
    tiny = dataclasses.replace(published, sources=(dataclasses.replace(source, size=None),))
    outcome = install(tiny, tmp_path / "data", mirror=str(mirror), log=lambda _: None)
    assert outcome.status == "installed" and not outcome.report.layout_problems
    # a tiny tree differs from the published totals, and only that
    assert [p for p in outcome.report.problems if "published" not in p] == []
    assert any(f"published {layout.total}" in p for p in outcome.report.problems)
    cls = get_dataset_class(name)
    assert cls(tmp_path / "data", [0], HPARAMS).environments == cls.ENVIRONMENTS
    unpublished = dataclasses.replace(layout, domain_counts=dict.fromkeys(layout.domain_counts), total=None)
    folder = tmp_path / "data" / layout.directory
    report = check(name, unpublished, folder)
    assert report.complete and list(report.counts) == cls.ENVIRONMENTS and sum(report.counts.values()) >= 18
    assert download.main(["--data_dir", str(tmp_path / "data"), "--check_images", "--datasets", name]) == 0
    assert f"{name}: {sum(report.counts.values())} images, 0 unreadable" in capsys.readouterr().out
    missing = sorted(folder.rglob("*.png"))[0]
    missing.unlink()
    (folder / layout.required[0]).unlink()
    report = check(name, unpublished, folder)
    assert not report.complete and sum(row.missing for row in report.rows) == 1
    assert f"{missing}: missing (named by the metadata)" in report.problems
    assert report.layout_problems == [f"{folder / layout.required[0]}: missing"]
    (folder / layout.required[1]).unlink()
    assert any(f"{folder / layout.required[1]} does not exist" in p for p in check(name, layout, folder).problems)
    assert check(name, layout, tmp_path / "absent").absent
