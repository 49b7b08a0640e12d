"""ResNet-50s with self-supervised weights: MIRO's `resnet50_barlowtwins` and `resnet50_moco`.

torchvision's ResNet-50 in resnet.py's featurizer (frozen BatchNorm, dropout after pooling, the
hooks), with other weights than ImageNet's supervised ones:

- Barlow Twins (Zbontar et al., ICML 2021): the file that `facebookresearch/barlowtwins`'s
  torch.hub entry `resnet50` loads, a torchvision ResNet-50 without `fc`.
- MoCo v3 (Chen et al., ICCV 2021): the training checkpoint `r-50-1000ep.pth.tar`, whose
  `module.base_encoder.*` less its projection head `fc` is the ResNet-50, as MIRO and MoCo v3's
  `main_lincls.py` read it. MIRO expects the file in its working directory; here it comes from
  torch's cache (downloaded when the network allows) or `--pretrained_path`.

Neither has a classifier: everything but `fc` is loaded, strictly, and `fc` becomes the identity.
A `--pretrained_path` file may also hold the ResNet-50 under torchvision's names.
"""

import torchvision

from domainbed.errors import UsageError
from domainbed.networks.pretrained import load_url_state
from domainbed.networks.registry import register_backbone
from domainbed.networks.resnet import ResNet

BARLOW_TWINS_URL = "https://dl.fbaipublicfiles.com/barlowtwins/ljng/resnet50.pth"
MOCO_V3_URL = "https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar"
MOCO_PREFIX = "module.base_encoder."
HEAD = ("fc.weight", "fc.bias")


def moco_encoder(state: dict) -> dict:
    """The base encoder of a MoCo v3 checkpoint, under torchvision's names (a state already
    under those names is kept)."""
    state = state.get("state_dict", state)
    if any(key.startswith(MOCO_PREFIX) for key in state):
        state = {key[len(MOCO_PREFIX):]: value for key, value in state.items() if key.startswith(MOCO_PREFIX)}
    return state


def load_encoder(network: torchvision.models.ResNet, state: dict, name: str) -> None:
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    expected = network.state_dict()
    # BatchNorm's step counters are absent from some releases, and unused with frozen statistics
    wrong = sorted(key for key in set(expected).symmetric_difference(state)
                   if key not in HEAD and not key.endswith("num_batches_tracked"))
    wrong += [key for key in state if key in expected and state[key].shape != expected[key].shape]
    if wrong:
        raise UsageError(f"the pretrained weights of {name} do not fit torchvision's ResNet-50: "
                         f"{len(wrong)} keys differ (first: {wrong[0]!r}); give the file of {name}'s weights")
    network.load_state_dict(state, strict=False)


def _builder(name: str, url: str, description: str, convert=lambda state: state):
    def build(input_shape, hparams):
        network = torchvision.models.resnet50(weights=None)
        if hparams["pretrained"]:
            load_encoder(network, convert(load_url_state(url, name, hparams, description)), name)
        return ResNet(network, input_shape, hparams)

    return register_backbone(name)(build)


_builder("resnet50_barlowtwins", BARLOW_TWINS_URL, "Barlow Twins weights")
_builder("resnet50_moco", MOCO_V3_URL, "MoCo v3 weights", moco_encoder)
