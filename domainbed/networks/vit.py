"""DeiT-Small (Touvron et al., ICML 2021) from timm as a featurizer: backbone `deit_small`.

The ViT rows of QT-DoG's paper are ERM-ViT (Sultana et al., ACCV 2022) on timm's
`deit_small_patch16_224` with ImageNet weights; with `--quant 1 --q_linear True` its Linear
layers (attention and MLP) are quantized as well as the patch embedding. The featurizer returns
the class token's final features (384 per sample); `resnet_dropout` applies to them, as it does
after a ResNet's global pooling. Images of another size than 224 get timm's interpolated
position embeddings, so the tests' 32 x 32 images work.

Weights come from `hparams["pretrained_path"]` (timm's .pth or .safetensors of the model, e.g.
deit_small_patch16_224-cd65a155.pth), else from the Hugging Face cache, else timm downloads them
when the network allows (set HF_HUB_OFFLINE=1 to fail at once when it does not); otherwise one
line says what to do instead. timm is imported only when this backbone is built.
"""

import os

import torch.nn as nn

from domainbed.errors import UsageError
from domainbed.networks.registry import register_backbone

TIMM_NAME = "deit_small_patch16_224"


def _import_timm():
    try:
        import timm
    except ImportError:
        raise UsageError("backbone deit_small needs timm: pip install timm") from None
    return timm


def _cached_weights(timm) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(TIMM_NAME).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def create_timm_model(hparams: dict, **kwargs) -> nn.Module:
    """timm's DeiT-Small without its head, with ImageNet weights when `pretrained`."""
    timm = _import_timm()
    if not hparams["pretrained"]:
        return timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, **kwargs)
    model = _load_pretrained(timm, hparams, **kwargs)
    model.reset_classifier(0)
    return model


def _load_pretrained(timm, hparams: dict, **kwargs) -> nn.Module:
    # with the ImageNet head in place timm loads strictly: a file of another model is an error,
    # not a silently random initialisation
    path = hparams.get("pretrained_path") or ""
    if path and not os.path.isfile(path):
        raise UsageError(f"pretrained_path {path!r} is not a file; give timm's {TIMM_NAME} weights "
                         "(.pth or .safetensors), or pass --pretrained False to train from scratch")
    path = path or _cached_weights(timm)
    try:
        if path:
            return timm.create_model(TIMM_NAME, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)
        return timm.create_model(TIMM_NAME, pretrained=True, **kwargs)
    except Exception as error:  # no network, a wrong file, a truncated cache: all end the same way
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"from {path}" if path else "from the Hugging Face hub or its cache"
        raise UsageError(f"cannot load ImageNet weights for deit_small {where} ({reason}); pass "
                         f"--pretrained_path FILE with timm's {TIMM_NAME} weights, or --pretrained False "
                         "to train from scratch") from None


class DeiT(nn.Module):
    def __init__(self, input_shape, hparams: dict):
        super().__init__()
        self.network = create_timm_model(hparams, in_chans=input_shape[0], img_size=tuple(input_shape[1:3]))
        self.n_outputs = self.network.num_features
        self.dropout = nn.Dropout(hparams["resnet_dropout"])

    def forward(self, x):
        return self.dropout(self.network(x))

    def stage_sites(self) -> list:
        """The patch embedding and the last block of each quarter of the blocks (DeiT-Small's 12:
        blocks 2, 5, 8, 11), as MIRO picks a ViT's feature layers."""
        blocks = self.network.blocks
        return [self.network.patch_embed, *(blocks[(quarter + 1) * len(blocks) // 4 - 1] for quarter in range(4))]


@register_backbone("deit_small")
def deit_small(input_shape, hparams):
    return DeiT(input_shape, hparams)
