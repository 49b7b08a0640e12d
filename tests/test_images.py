"""Every PIL mode a dataset may hold loads as the right RGB picture; a corrupt image is a
one-line error naming it, or skipped and counted with skip_bad_images; an empty split is
missing from the evaluation, not 0.0."""

import numpy as np
import pytest
import torch
from PIL import Image

from domainbed.datasets import get_dataset_class
from domainbed.datasets.image_folder import DomainFolder, load_rgb
from domainbed.errors import UsageError
from domainbed.training.evaluator import EvalSplit, Evaluator

GREY = 100  # the 8-bit grey level every test picture shows (left half), right half black


def _halves(high):
    array = np.zeros((8, 8), dtype=np.float64)
    array[:, :4] = high
    return array


def _pictures():
    grey16 = _halves(GREY * 257).astype(np.uint16)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:, :4] = GREY
    palette = Image.fromarray(rgb).quantize(colors=2)
    transparent = palette.copy()
    black_index = palette.getpixel((6, 0))
    transparent.info["transparency"] = black_index  # the black half becomes see-through: white
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    rgba[:, 4:, 3] = 0
    la = np.dstack([rgb[..., 0], rgba[..., 3]])
    return {
        "I;16": (Image.fromarray(grey16), 0),
        "I": (Image.fromarray(grey16.astype(np.int32)), 0),
        "F": (Image.fromarray(_halves(GREY / 255).astype(np.float32)), 0),
        "P": (palette, 0),
        "P+transparency": (transparent, 255),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), 0),
        "RGBA": (Image.fromarray(rgba), 255),
        "LA": (Image.fromarray(la, "LA"), 255),
        "L": (Image.fromarray(rgb[..., 0]), 0),
        "RGB": (Image.fromarray(rgb), 0),
    }


PICTURES = _pictures()


@pytest.mark.parametrize("mode", sorted(PICTURES))
def test_every_mode_loads_as_its_rgb_picture(tmp_path, mode):
    image, right = PICTURES[mode]
    path = tmp_path / f"picture.{'tiff' if mode in ('F', 'CMYK', 'I') else 'png'}"
    image.save(path)
    loaded = np.asarray(load_rgb(path))
    assert loaded.shape == (8, 8, 3) and loaded.dtype == np.uint8
    assert np.abs(loaded[:, :4].astype(int) - GREY).max() <= 1, (mode, loaded[0, 0])
    assert np.abs(loaded[:, 4:].astype(int) - right).max() <= 1, (mode, loaded[0, 7])


def test_sixteen_bit_png_is_scaled_not_white(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)).save(path)
    loaded = np.asarray(load_rgb(path))[..., 0]
    assert loaded.min() == 0 and loaded.max() == 255 and 100 < loaded.mean() < 155


def test_one_bit_image(tmp_path):
    path = tmp_path / "bits.png"
    Image.fromarray(_halves(255).astype(bool)).convert("1").save(path)
    loaded = np.asarray(load_rgb(path))
    assert (loaded[:, :4] == 255).all() and (loaded[:, 4:] == 0).all()


def _domain_tree(root, corrupt=None):
    for domain in ("d0", "d1"):
        for label in ("a", "b"):
            folder = root / domain / label
            folder.mkdir(parents=True)
            for index in range(3):
                Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(folder / f"{index}.png")
    if corrupt is not None:
        good = (root / corrupt).read_bytes()
        (root / corrupt).write_bytes(good[: len(good) // 2])
    return root


def test_corrupt_image_is_one_line_error_naming_it(tmp_path):
    root = _domain_tree(tmp_path / "data", corrupt="d1/b/2.png")
    folder = DomainFolder(root / "d1", ["a", "b"])
    with pytest.raises(UsageError) as caught:
        folder[5]
    message = str(caught.value)
    assert str(root / "d1/b/2.png") in message and "\n" not in message


def test_skip_bad_images_leaves_them_out_and_counts_them(tmp_path, capsys):
    root = _domain_tree(tmp_path / "data", corrupt="d1/b/2.png")
    (root / "d0/a/junk.jpg").write_bytes(b"not an image")
    hparams = {"image_size": 8, "data_augmentation": False, "skip_bad_images": True}
    dataset = get_dataset_class("ImageFolder")(root, [], hparams)
    assert [len(env) for env in dataset] == [6, 5]
    assert sorted(path.name for path, _ in dataset.skipped_images) == ["2.png", "junk.jpg"]
    assert "skipped 2 unreadable images" in capsys.readouterr().err
    assert all(isinstance(dataset[1][i][0], Image.Image) for i in range(5))
    with pytest.raises(UsageError, match="junk.jpg"):
        get_dataset_class("ImageFolder")(root, [], {**hparams, "skip_bad_images": False})[0][3]


def test_corrupt_held_out_image_ends_the_run_with_one_line(tmp_path, capsys):
    import train_all

    root = _domain_tree(tmp_path / "data", corrupt="d1/b/2.png")
    code = train_all.main(["corrupt", "--dataset", "ImageFolder", "--data_dir", str(root), "--algorithm", "ERM",
                           "--steps", "1", "--checkpoint_freq", "1", "--test_envs", "1", "--num_workers", "2",
                           "--pretrained", "False", "--backbone", "resnet18", "--image_size", "32",
                           "--swad", "False", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(root / "d1/b/2.png") in err[0], err
    assert "Traceback" not in err[0]


class _Constant(torch.nn.Module):
    def predict(self, x, env=None):
        return torch.tensor([[1.0, 0.0]]).expand(len(x), 2)


def test_empty_split_is_missing_not_zero():
    full = torch.utils.data.TensorDataset(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    splits = [EvalSplit("env0_in", full, 0, "in", None), EvalSplit("env0_out", empty, 0, "out", None),
              EvalSplit("env1_out", full, 1, "out", 0), EvalSplit("env2_out", empty, 2, "out", 1)]
    accuracies, losses, summaries = Evaluator(splits, [0], 8, 0, "cpu").evaluate(_Constant())
    assert accuracies == {"env0_in": 1.0, "env1_out": 1.0}
    assert "env0_out" not in losses and "env2_out" not in losses
    assert summaries["train_out"] == 1.0 and summaries["test_in"] == 1.0
    assert "test_out" not in summaries
