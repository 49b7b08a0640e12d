"""DeiT-Small (Touvron et al., ICML 2021) from timm as a featurizer: backbone `deit_small`.

The ViT rows of QT-DoG's paper are ERM-ViT (Sultana et al., ACCV 2022) on timm's
`deit_small_patch16_224` with ImageNet weights; with `--quant 1 --q_linear True` its Linear
layers (attention and MLP) are quantized as well as the patch embedding. The featurizer returns
the class token's final features (384 per sample); `resnet_dropout` applies to them, as it does
after a ResNet's global pooling. Images of another size than 224 get timm's interpolated
position embeddings, so the tests' 32 x 32 images work.

Weights come from `hparams["pretrained_path"]` (timm's .pth or .safetensors of the model, e.g.
deit_small_patch16_224-cd65a155.pth), else from the Hugging Face cache, else timm downloads them
when the network allows (networks/pretrained.py); otherwise one line says what to do instead.
timm is imported only when this backbone is built.
"""

import torch.nn as nn

from domainbed.networks.pretrained import import_timm, timm_pretrained_model
from domainbed.networks.registry import register_backbone

TIMM_NAME = "deit_small_patch16_224"


def create_timm_model(hparams: dict, **kwargs) -> nn.Module:
    """timm's DeiT-Small without its head, with ImageNet weights when `pretrained`."""
    if not hparams["pretrained"]:
        return import_timm("deit_small").create_model(TIMM_NAME, pretrained=False, num_classes=0, **kwargs)
    model = timm_pretrained_model(TIMM_NAME, "deit_small", hparams, "ImageNet weights", **kwargs)
    model.reset_classifier(0)
    return model


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
