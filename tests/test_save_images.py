"""`python -m domainbed.scripts.save_images`: DomainBed's sample images of each environment, and a grid."""

from pathlib import Path

import pytest
from PIL import Image

from domainbed.scripts import save_images


def image_tree(root: Path) -> Path:
    """DATA/shapes/{blue,green}/{circle,square}/k.png: two domains, two classes, three images each."""
    for domain, colour in (("blue", (0, 0, 255)), ("green", (0, 255, 0))):
        for label in ("circle", "square"):
            folder = root / "shapes" / domain / label
            folder.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (20 + k, 16), colour).save(folder / f"{k}.png")
    return root


def test_every_environment_gets_its_images_and_a_row_of_the_grid(tmp_path, capsys):
    data, out = image_tree(tmp_path / "data"), tmp_path / "out"
    assert save_images.main(["--data_dir", str(data / "shapes"), "--output_dir", str(out), "--datasets",
                             "ImageFolder", "--n_images", "3"]) == 0
    names = sorted(path.name for path in out.glob("ImageFolder_env*.png"))
    assert len(names) == 6
    assert [name.split("_")[1] for name in names] == ["env0blue"] * 3 + ["env1green"] * 3
    assert all(name.rsplit("_class", 1)[1] in ("0.png", "1.png") for name in names)
    with Image.open(out / names[0]) as first:
        assert first.size == (224, 224) and first.getpixel((100, 100)) == (0, 0, 255)
    with Image.open(out / "ImageFolder_grid.png") as grid:
        assert grid.size == (3 * 226 + 2, 2 * 226 + 2)  # three columns, two environments, 2-pixel padding
    assert "ImageFolder: 6 images" in capsys.readouterr().out


def test_tensor_datasets_are_shown_in_range_and_draws_are_seeded(tmp_path):
    argv = ["--data_dir", str(tmp_path), "--datasets", "Debug28", "--n_images", "2"]
    assert save_images.main([*argv, "--output_dir", str(tmp_path / "a")]) == 0
    assert save_images.main([*argv, "--output_dir", str(tmp_path / "b")]) == 0
    names = sorted(path.name for path in (tmp_path / "a").glob("Debug28_env*.png"))
    assert len(names) == 6 and names == sorted(path.name for path in (tmp_path / "b").glob("Debug28_env*.png"))
    with Image.open(tmp_path / "a" / names[0]) as image:
        assert image.size == (28, 28) and image.mode == "RGB"


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "NoSuchData"], "NoSuchData"),
    (["--datasets", "PACS"], "does not exist"),
    ([], "none of OfficeHome"),
    (["--datasets", "Debug28", "--n_images", "0"], "--n_images 0 is out of range"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert save_images.main(["--data_dir", str(tmp_path / "empty"), "--output_dir", str(out), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1].startswith("error: ") and message in captured.err.splitlines()[-1]
    assert not out.exists()


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        save_images.main(["--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out
