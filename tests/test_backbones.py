"""Backbones (domainbed/networks/, docs/backbones.md): every registered one built from scratch at a
small size keeps the backbone contract; the input normalisation each declares reaches both
pipelines; weights come from --pretrained_path (.pth, .safetensors), the caches, or fail in one
line naming the file; DomainBed's switches select backbones as DomainBed's do."""

import pytest
import torch
import torch.nn as nn

from domainbed import hparams_registry, networks
from domainbed.algorithms import contract
from domainbed.errors import UsageError
from domainbed.networks import domainbed_switches, selected_backbone
from domainbed.networks.registry import IMAGENET_MEAN, IMAGENET_STD, builder_normalization, get_backbone

pytestmark = pytest.mark.filterwarnings("ignore:--precision bf16:UserWarning")

HP = hparams_registry.default_hparams("ERM", "PACS") | {"pretrained": False}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# more than 40M parameters: built in the slow suite only
HEAVY = {"alexnet", "clip_vit-b16", "convnext_base", "convnext_large", "convnext_small", "convnext_xlarge", "dinov2_vitb14",
         "dinov2_vitl14", "resnet101", "swag_regnety_16gf", "vit_b16"}
# the backbones this suite added, each with the file its weights come in
NEW_BACKBONES = {
    "resnet50_augmix": "timm/resnet50.ram_in1k", "dinov2_vits14": "timm/vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "timm/vit_base_patch14_dinov2.lvd142m", "dinov2_vitl14": "timm/vit_large_patch14_dinov2.lvd142m",
    "clip_resnet50": "timm/resnet50_clip.openai", "clip_vit-b16": "timm/vit_base_patch16_clip_224.openai",
    "swag_regnety_16gf": "timm/regnety_160.swag_lc_in1k", "vit_b16": "timm/vit_base_patch16_224.augreg_in21k",
    "convnext_tiny": "timm/convnext_tiny.fb_in22k_ft_in1k", "convnext_xlarge": "timm/convnext_xlarge.fb_in22k_ft_in1k",
    "timm:test_vit": "timm/test_vit.r160_in1k",
    "resnet50_barlowtwins": "resnet50.pth", "resnet50_moco": "r-50-1000ep.pth.tar",
}


def _backbone_cases():
    for name in sorted(networks.BACKBONES):
        yield pytest.param(name, marks=[pytest.mark.slow] if name in HEAVY else [])
    for name in ("timm:test_vit", "timm:test_resnet", "timm:test_convnext", "timm:test_byobnet", "timm:test_efficientnet"):
        yield pytest.param(name)


def check_hooks(featurizer, x):
    """The hooks a featurizer offers behave as domainbed/networks/registry.py says."""
    with torch.no_grad():
        out = featurizer(x)
        assert out.shape == (len(x), featurizer.n_outputs) and torch.isfinite(out).all()
        if hasattr(featurizer, "feature_map"):
            z = featurizer.feature_map(x)
            assert z.dim() == 4
            assert torch.allclose(featurizer.pool(z), out, atol=1e-5)
        fired, handles = [], []
        sites = featurizer.stage_sites() if hasattr(featurizer, "stage_sites") else []
        for index, module in enumerate(sites):
            handles.append(module.register_forward_hook(lambda m, a, o, index=index: fired.append(index)))
        styles = featurizer.style_sites() if hasattr(featurizer, "style_sites") else []
        style_outputs = []
        for module in styles:
            handles.append(module.register_forward_hook(lambda m, a, o: style_outputs.append(o.dim())))
        masks = featurizer.mask_sites() if hasattr(featurizer, "mask_sites") else {}
        widths = {}
        for name, (module, _) in masks.items():
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: widths.update({name: a[0].shape})))
        featurizer(x)
        for handle in handles:
            handle.remove()
    assert fired == list(range(len(sites)))  # each once, in forward order
    assert style_outputs == [4] * len(styles)  # feature maps, whose statistics MixStyle mixes
    assert {name: shape[1] for name, shape in widths.items()} == {name: width for name, (_, width) in masks.items()}
    assert all(len(shape) == 4 for shape in widths.values())  # DMG masks channels of maps


@pytest.mark.parametrize("name", list(_backbone_cases()))
def test_every_backbone_builds_from_scratch_and_keeps_the_contract(name):
    torch.manual_seed(0)
    shape = (3, 64, 64) if name == "alexnet" else (3, 32, 32)
    featurizer = networks.Featurizer(shape, HP | {"backbone": name}).eval()
    check_hooks(featurizer, torch.randn(2, *shape))


def test_the_new_backbones_have_the_hooks_their_architecture_has():
    def hooks(name):
        builder = get_backbone(name)
        with torch.device("meta"):
            featurizer = builder((3, 224, 224), HP)
        return {hook for hook in ("feature_map", "mask_sites", "style_sites", "stage_sites") if hasattr(featurizer, hook)}

    cnn = {"feature_map", "mask_sites", "style_sites", "stage_sites"}
    for name in ("resnet50_augmix", "clip_resnet50", "swag_regnety_16gf", "convnext_tiny"):
        assert hooks(name) == cnn, name
    for name in ("dinov2_vits14", "clip_vit-b16", "vit_b16"):
        assert hooks(name) == {"stage_sites"}, name
    with torch.device("meta"):
        assert list(get_backbone("swag_regnety_16gf")((3, 224, 224), HP).mask_sites()) == ["s3", "s4"]
        assert list(get_backbone("convnext_tiny")((3, 224, 224), HP).mask_sites()) == ["stage3", "stage4"]
        assert list(get_backbone("resnet50_augmix")((3, 224, 224), HP).mask_sites()) == ["layer3", "layer4"]
        vit = get_backbone("clip_vit-b16")((3, 224, 224), HP)
    blocks = list(vit.network.blocks)
    assert [blocks.index(m) for m in vit.stage_sites()[1:]] == [2, 5, 8, 11]  # MIRO's CLIP ViT-B/16 blocks
    assert vit.stage_sites()[0] is vit.network.patch_embed


def test_feature_widths_are_the_published_ones():
    widths = {"resnet50_augmix": 2048, "dinov2_vits14": 5 * 384, "dinov2_vitb14": 5 * 768, "dinov2_vitl14": 5 * 1024,
              "clip_resnet50": 1024, "clip_vit-b16": 512, "swag_regnety_16gf": 3024, "vit_b16": 768,
              "convnext_tiny": 768, "convnext_base": 1024, "resnet50_moco": 2048, "resnet50_barlowtwins": 2048}
    with torch.device("meta"):
        assert {name: get_backbone(name)((3, 224, 224), HP).n_outputs for name in widths} == widths


def test_each_backbone_declares_the_normalisation_of_its_weights():
    def normalisation(name, **switches):
        return networks.input_normalization(HP | {"backbone": name, **switches})

    imagenet = (IMAGENET_MEAN, IMAGENET_STD)
    assert normalisation("clip_vit-b16") == normalisation("clip_resnet50") == (CLIP_MEAN, CLIP_STD)
    assert normalisation("vit_b16") == normalisation("timm:test_vit") == ((0.5,) * 3, (0.5,) * 3)
    for name in ("resnet50", "resnet18", "alexnet", "deit_small", "resnet50_augmix", "dinov2_vits14", "swag_regnety_16gf",
                 "convnext_tiny", "resnet50_moco"):
        assert normalisation(name) == imagenet, name
    assert normalisation("resnet50", vit=True, dinov2=True) == imagenet  # through DomainBed's switches
    assert builder_normalization(lambda shape, hparams: None) == imagenet


def _image_root(root, domains=("d0", "d1", "d2"), classes=("c0", "c1"), per_class=3, size=40):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for domain in domains:
        for label in classes:
            folder = root / domain / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_both_pipelines_normalise_for_the_backbone(tmp_path):
    from domainbed.data.gpu_pipeline import GpuPipeline
    from domainbed.datasets import get_dataset_class

    root = _image_root(tmp_path / "data")
    hparams = {**hparams_registry.default_hparams("ERM", "PACS"), **hparams_registry.run_setting_defaults("ERM", "PACS"),
               "image_size": 32, "backbone": "clip_vit-b16"}
    dataset = get_dataset_class("ImageFolder")(str(root), [], hparams)
    for transform in (dataset.eval_transform, dataset.train_transform):
        normalize = transform.transforms[-1]
        assert tuple(normalize.mean) == CLIP_MEAN and tuple(normalize.std) == CLIP_STD
    pipeline = GpuPipeline(dataset, hparams, "cpu")
    assert tuple(pipeline.mean) == tuple(pipeline.augmentation.mean) == CLIP_MEAN
    assert tuple(pipeline.std) == tuple(pipeline.augmentation.std) == CLIP_STD
    default = get_dataset_class("ImageFolder")(str(root), [], hparams | {"backbone": "resnet50"})
    assert tuple(default.eval_transform.transforms[-1].mean) == IMAGENET_MEAN


# --- weights ------------------------------------------------------------------------------


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network and empty caches: the Hugging Face hub offline, torch's hub in tmp_path."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    return tmp_path


@pytest.mark.parametrize("name", sorted(NEW_BACKBONES))
def test_offline_pretrained_weights_fail_in_one_line_naming_the_file(offline, name):
    with pytest.raises(UsageError) as error:
        get_backbone(name)((3, 32, 32), HP | {"pretrained": True})
    message = str(error.value)
    assert "\n" not in message and NEW_BACKBONES[name] in message
    assert str(offline) in message  # where it was looked for
    assert "--pretrained_path FILE" in message and "--pretrained False" in message


def _saved(tmp_path, state, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)  # a training checkpoint, as DeiT's file
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_path_loads_a_saved_state_of_the_timm_model(tmp_path, offline, suffix):
    import timm

    torch.manual_seed(1)
    reference = timm.create_model("test_vit.r160_in1k", pretrained=False)
    path = _saved(tmp_path, reference.state_dict(), suffix)
    featurizer = get_backbone("timm:test_vit")((3, 32, 32), HP | {"pretrained": True, "pretrained_path": str(path)})
    assert torch.equal(featurizer.network.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    assert featurizer.n_outputs == 64 and featurizer(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_a_named_backbone_loads_its_saved_state_and_refuses_another_models(tmp_path, offline):
    import timm

    reference = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False)
    path = _saved(tmp_path, reference.state_dict(), ".safetensors")
    hparams = HP | {"pretrained": True, "pretrained_path": str(path)}
    featurizer = get_backbone("dinov2_vits14")((3, 28 + 14, 28 + 14), hparams)
    assert torch.equal(featurizer.network.blocks[11].mlp.fc2.weight, reference.blocks[11].mlp.fc2.weight)
    assert featurizer.network.pos_embed.shape[1] == 1 + 3 * 3  # resampled from 37 x 37 to the input's grid
    other = _saved(tmp_path, timm.create_model("test_vit", pretrained=False).state_dict(), ".pth")
    with pytest.raises(UsageError, match=r"cannot load DINOv2 weights for dinov2_vits14 from .*weights\.pth") as error:
        get_backbone("dinov2_vits14")((3, 32, 32), hparams | {"pretrained_path": str(other)})
    assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="pretrained_path .* is not a file"):
        get_backbone("dinov2_vits14")((3, 32, 32), hparams | {"pretrained_path": str(tmp_path / "none.pth")})


def test_the_hugging_face_cache_serves_weights_offline(offline):
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("test_vit.r160_in1k", pretrained=False)
    snapshot = offline / "hf" / "models--timm--test_vit.r160_in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    featurizer = get_backbone("timm:test_vit")((3, 32, 32), HP | {"pretrained": True})
    assert torch.equal(featurizer.network.patch_embed.proj.weight, reference.patch_embed.proj.weight)


def test_a_weights_file_that_would_run_code_is_refused(tmp_path, offline):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(UsageError, match="could run code") as error:
        get_backbone("timm:test_vit")((3, 32, 32), HP | {"pretrained": True, "pretrained_path": str(path)})
    assert "\n" not in str(error.value)


def test_mocos_checkpoint_gives_its_base_encoder(tmp_path, offline):
    import torchvision

    torch.manual_seed(2)
    encoder = torchvision.models.resnet50()
    state = {f"module.base_encoder.{k}": v for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    state |= {"module.base_encoder.fc.0.weight": torch.zeros(4, 2048), "module.momentum_encoder.conv1.weight":
              torch.zeros(64, 3, 7, 7), "module.predictor.0.weight": torch.zeros(4, 4)}
    path = tmp_path / "r-50-1000ep.pth.tar"
    torch.save({"epoch": 1000, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}},
               path)
    featurizer = get_backbone("resnet50_moco")((3, 32, 32), HP | {"pretrained": True, "pretrained_path": str(path)})
    assert torch.equal(featurizer.network.layer4[2].conv3.weight, encoder.layer4[2].conv3.weight)
    assert featurizer.freeze_bn and isinstance(featurizer.network.fc, nn.Identity)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(UsageError, match="weights of resnet50_moco do not fit torchvision's ResNet-50"):
        get_backbone("resnet50_moco")((3, 32, 32), HP | {"pretrained": True, "pretrained_path": str(path)})


def test_barlow_twins_file_is_a_resnet50_without_fc(tmp_path, offline):
    import torchvision

    encoder = torchvision.models.resnet50()
    path = _saved(tmp_path, {k: v for k, v in encoder.state_dict().items() if not k.startswith("fc.")}, ".safetensors")
    featurizer = get_backbone("resnet50_barlowtwins")((3, 32, 32), HP | {"pretrained": True, "pretrained_path": str(path)})
    assert torch.equal(featurizer.network.conv1.weight, encoder.conv1.weight)


def test_the_command_line_fails_offline_in_one_line_before_the_run_directory(offline, capsys):
    import train_all
    from PIL import Image

    for domain in ["art_painting", "cartoon", "photo", "sketch"]:
        (offline / "PACS" / domain / "dog").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(offline / "PACS" / domain / "dog" / "1.png")
    out = offline / "out"
    assert train_all.main(["t", "--dataset", "PACS", "--data_dir", str(offline), "--backbone", "clip_vit-b16",
                           "--pretrained", "True", "--image_size", "32", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors of timm/vit_base_patch16_clip_224.openai" in err[0]
    assert not out.exists()


# --- timm:<model name> --------------------------------------------------------------------


def test_timm_names_are_checked_in_one_line():
    assert get_backbone("timm:test_vit") is get_backbone("timm:test_vit")
    for name, expected in (("timm:nope_net", "timm .* has no model 'nope_net'"),
                           ("timm:test_vit.no_such_tag", "Invalid pretrained tag"),
                           ("timm:", "names no model")):
        with pytest.raises(UsageError, match=expected) as error:
            get_backbone(name)
        assert "\n" not in str(error.value)
    from domainbed.networks.timm_models import TimmBackbone, TimmSpec

    with pytest.raises(UsageError, match=r"backbone old is timm's nope_net.x, which timm .* lacks; pip install"):
        TimmBackbone("old", TimmSpec("nope_net.x", "weights"))((3, 32, 32), HP)
    from domainbed.hparams.checks import check_hparams

    with pytest.raises(UsageError, match=r"hparam backbone 'timm:nope_net' is out of range; .*timm:<model name>"):
        check_hparams("ERM", "PACS", HP | {"backbone": "timm:nope_net"})


# --- DomainBed's switches -----------------------------------------------------------------


def test_domainbeds_switches_select_backbones_as_domainbed():
    def select(**hparams):
        return selected_backbone(HP | hparams)

    assert select() == "resnet50"
    assert select(resnet50_augmix=True) == "resnet50_augmix"
    assert select(vit=True, dinov2=True) == select(vit=True, dinov2=True, resnet50_augmix=True) == "dinov2_vitb14"
    assert select(vit=True, dinov2=True, backbone="dinov2_vits14") == "dinov2_vits14"
    assert select(backbone="resnet18") == "resnet18"
    for hparams, expected in (({"dinov2": True}, "dinov2 True selects DINOv2 only with vit True"),
                              ({"vit": True}, "vit True needs dinov2 True"),
                              ({"resnet50_augmix": True, "backbone": "resnet18"},
                               "select backbone resnet50_augmix, but backbone is 'resnet18'"),
                              ({"vit": True, "dinov2": True, "backbone": "clip_vit-b16"},
                               "select backbone dinov2_vitb14, but backbone is 'clip_vit-b16'")):
        with pytest.raises(UsageError, match=expected):
            select(**hparams)
    assert domainbed_switches.DEFAULT_BACKBONE == HP["backbone"]


def test_domainbeds_dinov2_features_are_four_class_tokens_and_the_mean_patch_token():
    torch.manual_seed(0)
    featurizer = networks.Featurizer((3, 42, 42), HP | {"backbone": "dinov2_vits14"}).eval()
    vit = featurizer.network
    x = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        outputs = []
        for block in vit.blocks:
            tokens = block(tokens)
            outputs.append(vit.norm(tokens))
        expected = torch.cat([*(o[:, 0] for o in outputs[-4:]), outputs[-1][:, 1:].mean(1)], dim=1)
        assert torch.allclose(featurizer(x), expected, atol=1e-5)
    assert featurizer.n_outputs == 5 * 384


def test_vit_attn_tune_trains_the_attention_only_and_vit_dropout_drops_features():
    featurizer = networks.Featurizer((3, 32, 32), HP | {"backbone": "timm:test_vit", "vit_attn_tune": True,
                                                         "vit_dropout": 0.1})
    trained = {n for n, p in featurizer.named_parameters() if p.requires_grad}
    assert trained and all(".attn." in n for n in trained)
    assert "network.blocks.0.attn.qkv.weight" in trained and "network.blocks.0.mlp.fc1.weight" not in trained
    assert featurizer.dropout.p == 0.1
    with pytest.raises(UsageError, match="vit_attn_tune True trains a ViT's attention layers only, and backbone "
                                         "resnet18 has none"):
        networks.Featurizer((3, 32, 32), HP | {"backbone": "resnet18", "vit_attn_tune": True})
    from domainbed.algorithms import get_algorithm_class

    hparams = hparams_registry.default_hparams("DMG", "PACS") | {"backbone": "timm:test_vit", "pretrained": False}
    with pytest.raises(UsageError, match="set vit_dropout to 0"):
        get_algorithm_class("DMG")((3, 32, 32), 3, 2, hparams | {"vit_dropout": 0.5})


# --- the rest of the harness ----------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["timm:test_vit", "timm:test_convnext"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_a_vit_and_a_timm_cnn(backbone, precision):
    assert contract.check_mixed_precision(contract.subject("ERM", backbone), precision) == []


@pytest.mark.parametrize("backbone", ["timm:test_resnet", "timm:test_convnext", "timm:test_byobnet"])
def test_dmg_masks_every_site_of_a_timm_cnn_also_when_quantized(backbone):
    sites = list(networks.Featurizer((3, 32, 32), HP | {"backbone": backbone}).mask_sites())
    dmg = contract.subject("DMG", backbone)
    dmg = contract.Subject("DMG", dmg.algorithm_class, dmg.hparams | {"mask_layers": ",".join(["fc", *sites])}, "images")
    assert dmg.build().masks.names == ["fc", *sites]
    assert contract.check_update(dmg) == contract.check_quantization_swap(dmg) == []


def test_iga_differentiates_twice_through_a_vits_attention():
    assert contract.check_update(contract.subject("IGA", "timm:test_vit")) == []
