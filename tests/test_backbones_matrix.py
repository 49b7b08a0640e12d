"""Methods x foundation-model backbones through train_all (slow): every pair trains from scratch
on a small generated PACS-shaped folder at 64 px, with SWAD and with QT-DoG's quantization, and
prints the table, or refuses in one line before the run when the method needs a hook the backbone
lacks. Also a ViT under --compile with the gpu pipeline, and exact resume on a ViT."""

import numpy as np
import pytest
from PIL import Image

from domainbed.datasets import get_dataset_class

METHODS = ["ERM", "SAGM_DG", "GradSurgery", "RSC", "DMG", "MIRO", "ERMPlusPlus"]
BACKBONES = ["resnet50_augmix", "dinov2_vits14", "clip_vit-b16", "swag_regnety_16gf"]
VARIANTS = {
    "swad": [],  # config.yaml's LossValley
    "quant": ["--quant", "1", "--q_steps", "3", "--q_linear", "True"],  # swapped at step 3, Linear layers too
}
HOOKS = ("feature_map", "mask_sites", "style_sites", "stage_sites")


@pytest.fixture(scope="module")
def pacs_like(tmp_path_factory):
    """PACS's four domain folders, two classes of six 72 px images each."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for domain in get_dataset_class("PACS").DOMAIN_DIRS:
        for label in ("dog", "horse"):
            folder = root / "PACS" / domain / label
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _run(capsys, tmp_path, data, *argv):
    import train_all

    status = train_all.main(["t", "--dataset", "PACS", "--data_dir", str(data), "--pretrained", "False",
                             "--image_size", "64", "--steps", "6", "--checkpoint_freq", "3", "--test_envs", "0",
                             "--batch_size", "8", "--swad_bn_steps", "2", "--num_workers", "0",
                             "--output_dir", str(tmp_path / "out"), *argv])
    return status, capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("algorithm", METHODS)
def test_every_method_on_every_foundation_backbone(pacs_like, tmp_path, capsys, algorithm, backbone, variant):
    status, output = _run(capsys, tmp_path, pacs_like, "--algorithm", algorithm, "--backbone", backbone,
                          *VARIANTS[variant])
    if status == 2:  # a refusal: one line naming the hook, nothing created
        lines = output.err.strip().splitlines()
        assert len(lines) == 1 and any(hook in lines[0] for hook in HOOKS), output.err
        assert not (tmp_path / "out").exists()
        return
    assert status == 0, output.err
    assert "oracle" in output.out and "art_painting" in output.out, output.out  # the table, SWAD's columns
    if variant == "swad":
        assert "SWAD" in output.out


@pytest.mark.slow
def test_a_vit_compiles_on_the_gpu_pipeline_under_bf16(pacs_like, tmp_path, capsys):
    status, output = _run(capsys, tmp_path, pacs_like, "--backbone", "timm:test_vit", "--compile", "--pipeline", "gpu",
                          "--precision", "bf16", "--swad", "False")
    assert status == 0, output.err


@pytest.mark.slow
def test_a_vit_run_resumes_exactly(run_train_all, monkeypatch, pacs_like):
    from test_exact_resume import check_exact_resume

    argv = ["--dataset", "PACS", "--data_dir", str(pacs_like), "--backbone", "timm:test_vit", "--pretrained", "False",
            "--image_size", "32", "--steps", "7", "--checkpoint_freq", "2", "--batch_size", "4", "--test_envs", "0",
            "--deterministic", "--num_workers", "1", "--algorithm", "RSC", "--swad", "False"]
    check_exact_resume(run_train_all, monkeypatch, argv, ["step:4"])
