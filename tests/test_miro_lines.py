"""MIRO's published command lines (kakaobrain/miro README: the main line, the line with SWAD, and
the five SWAG lines of "pushing the limits") run unchanged, with a short-run suffix, on generated
image folders: `--model` names the backbone, `--ld` and `--tolerance_ratio` reach their hparams,
and SWAD is on only where the line says `--swad True`, as in MIRO's repository. The default suite
resolves every line (`--show`: settings written, nothing trained); training them is slow (a
ResNet-50 or a RegNetY-16GF from scratch on the CPU).

The SWAG lines need the backbone `swag_regnety_16gf` (timm's RegNetY-16GF, registered by the
backbones of domainbed/networks/); from scratch (`--pretrained False`) they need no weights."""

import json
import shlex

import numpy as np
import pytest
from PIL import Image

from domainbed.runs import layout

README_MAIN = ("python train_all.py exp_name --data_dir /my/dataset/path --algorithm MIRO --dataset PACS --lr 3e-5 "
               "--resnet_dropout 0.0 --weight_decay 0.0 --ld 0.01 --trial_seed 0")
README_SWAD = ("python train_all.py exp_name --data_dir /my/dataset/path --algorithm MIRO --dataset PACS --ld 0.01 "
               "--swad True --trial_seed 0")
SWAG = [
    "python train_all.py PACS --data_dir /my/dataset/path --algorithm MIRO --dataset PACS --ld 0.01 "
    "--model swag_regnety_16gf --batch_size 16 --swad True",
    "python train_all.py VLCS --data_dir /my/dataset/path --algorithm MIRO --dataset VLCS --ld 0.01 --checkpoint_freq 50 "
    "--tolerance_ratio 0.2 --model swag_regnety_16gf --batch_size 16 --swad True",
    "python train_all.py OfficeHome --data_dir /my/dataset/path --algorithm MIRO --dataset OfficeHome --ld 0.01 "
    "--model swag_regnety_16gf --batch_size 16 --swad True",
    "python train_all.py TerraIncognita --data_dir /my/dataset/path --algorithm MIRO --dataset TerraIncognita --ld 0.01 "
    "--model swag_regnety_16gf --batch_size 16 --swad True",
    "python train_all.py DomainNet --data_dir /my/dataset/path --algorithm MIRO --dataset DomainNet --ld 0.1 "
    "--checkpoint_freq 500 --model swag_regnety_16gf --batch_size 16 --swad True",
]
# from scratch, small images and batches, one fold of two steps, each evaluated
SHORT_RUN = ["--pretrained", "False", "--image_size", "32", "--batch_size", "2", "--steps", "2", "--checkpoint_freq", "1",
             "--test_envs", "0", "--swad_bn_steps", "1"]
FOLDERS = {  # the published datasets' folders and domains, two classes of three images each
    "PACS": ("PACS", ["art_painting", "cartoon", "photo", "sketch"]),
    "VLCS": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"]),
    "OfficeHome": ("office_home", ["Art", "Clipart", "Product", "Real World"]),
    "TerraIncognita": ("terra_incognita", ["location_100", "location_38", "location_43", "location_46"]),
    "DomainNet": ("domain_net", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generator = np.random.default_rng(0)
    for directory, domains in FOLDERS.values():
        for domain in domains:
            for cls in ("a", "b"):
                folder = root / directory / domain / cls
                folder.mkdir(parents=True)
                for i in range(3):
                    pixels = generator.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _argv(line, data_dir) -> list:
    argv = shlex.split(line)
    assert argv[:2] == ["python", "train_all.py"]
    return [str(data_dir) if token == "/my/dataset/path" else token for token in argv[2:]]


def _run_published(run_train_all, line, data_dir):
    argv = _argv(line, data_dir)
    result = run_train_all(*argv, *SHORT_RUN)
    hparams = json.loads(layout.hparams_path(result["out_dir"]).read_text())
    return result, hparams, dict(zip(argv[1::2], argv[2::2]))


@pytest.mark.parametrize("line", [README_MAIN, README_SWAD, *SWAG],
                         ids=["main", "swad", *(f"SWAG-{line.split()[2]}" for line in SWAG)])
def test_every_line_resolves_to_miros_settings(run_train_all, tmp_path, line):
    argv = _argv(line, tmp_path / "data")  # --show reads no data
    flags = dict(zip(argv[1::2], argv[2::2]))
    run_train_all(*argv, "--show")
    (run_dir,) = (tmp_path / "out" / flags["--dataset"]).iterdir()
    hparams = json.loads(layout.hparams_path(run_dir).read_text())
    assert hparams["backbone"] == flags.get("--model", "resnet50") and hparams["ld"] == float(flags["--ld"])
    assert hparams["swad"] == flags.get("--swad", "False")  # MIRO's config: no SWAD unless the line asks
    assert hparams["swad_kwargs"]["tolerance_ratio"] == float(flags.get("--tolerance_ratio", 0.3))
    assert hparams["batch_size"] == int(flags.get("--batch_size", 32))
    assert (hparams["lr"], hparams["resnet_dropout"]) == (float(flags.get("--lr", 5e-5)), 0.0)
    assert (hparams["lr_mult"], hparams["feat_layers"]) == (10.0, "stem_block")


@pytest.mark.slow  # a ResNet-50 from scratch, built, copied for f0 and trained on the CPU
@pytest.mark.parametrize("line, averaged", [(README_MAIN, False), (README_SWAD, True)], ids=["main", "swad"])
def test_readme_lines_run_with_resnet50_and_swad_only_when_asked(run_train_all, data_dir, line, averaged):
    result, hparams, flags = _run_published(run_train_all, line, data_dir)
    assert hparams["backbone"] == "resnet50" and hparams["ld"] == 0.01  # MIRO's default model
    assert ("SWAD" in result["rows"]) is averaged and "oracle" in result["rows"]
    assert hparams["swad"] == ("True" if averaged else "False")
    if "--lr" in flags:
        assert (hparams["lr"], hparams["resnet_dropout"], hparams["weight_decay"]) == (3e-5, 0.0, 0.0)


@pytest.mark.slow  # RegNetY-16GF: 84M parameters, built, copied for f0 and averaged on the CPU
@pytest.mark.parametrize("line", SWAG, ids=[line.split()[2] for line in SWAG])
def test_swag_lines_run_with_regnety_16gf_and_swad(run_train_all, data_dir, line):
    result, hparams, flags = _run_published(run_train_all, line, data_dir)
    assert hparams["backbone"] == "swag_regnety_16gf" and hparams["ld"] == float(flags["--ld"])
    assert hparams["swad"] == "True" and {"SWAD", "SWAD (inD)"} <= set(result["rows"])
    assert hparams["swad_kwargs"]["tolerance_ratio"] == float(flags.get("--tolerance_ratio", 0.3))
    assert hparams["batch_size"] == 2  # the short run's, after the line's 16
