"""DomainBed's backbone switches, `resnet50_augmix`, `vit` and `dinov2`, as a choice of `backbone`.

DomainBed (facebookresearch/DomainBed, networks.py) picks its featurizer from booleans: `vit`
with `dinov2` gives its DINOv2 ViT-B/14 (`dinov2_vitb14` here), otherwise `resnet50_augmix` gives
timm's `resnet50.ram_in1k` (`resnet50_augmix` here) instead of torchvision's ResNet-50. Here the
`backbone` hparam names the featurizer, and the switches select one when `backbone` is left at
its default, `resnet50`, or names what they select; any other backbone beside a switch is a
conflict, a one-line error naming both.

Where we differ from DomainBed: `resnet50_augmix` defaults to False, so the default backbone
stays SWAD's torchvision ResNet-50 (DomainBed's current default is True). `dinov2` without
`vit` (which DomainBed ignores) and `vit` without `dinov2` (DomainBed's NotImplementedError)
are one-line errors.
"""

from domainbed.errors import UsageError

DEFAULT_BACKBONE = "resnet50"
DINOV2 = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14")


def _conflict(switches: str, selected: str, backbone: str) -> UsageError:
    return UsageError(f"hparams {switches} select backbone {selected}, but backbone is {backbone!r}; "
                      f"leave backbone at {DEFAULT_BACKBONE} or drop the switch")


def selected_backbone(hparams: dict) -> str:
    """The backbone `hparams` ask for: `backbone`, or what DomainBed's switches select."""
    backbone = hparams.get("backbone", DEFAULT_BACKBONE)
    vit, dinov2 = bool(hparams.get("vit", False)), bool(hparams.get("dinov2", False))
    if dinov2 and not vit:
        raise UsageError("hparam dinov2 True selects DINOv2 only with vit True, as in DomainBed; set vit True too, "
                         "or use --backbone dinov2_vitb14")
    if vit:
        if not dinov2:
            raise UsageError("hparam vit True needs dinov2 True (DomainBed's one ViT is DINOv2 ViT-B/14); or name a "
                             "ViT with --backbone (dinov2_vitb14, vit_b16, clip_vit-b16, timm:<model name>)")
        if backbone == DEFAULT_BACKBONE:
            return "dinov2_vitb14"
        if backbone not in DINOV2:
            raise _conflict("vit and dinov2", "dinov2_vitb14", backbone)
        return backbone
    if hparams.get("resnet50_augmix", False):
        if backbone not in (DEFAULT_BACKBONE, "resnet50_augmix"):
            raise _conflict("resnet50_augmix", "resnet50_augmix", backbone)
        return "resnet50_augmix"
    return backbone
