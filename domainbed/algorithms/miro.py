"""MIRO (Cha, Lee, Park, Chun, "Domain Generalization by Mutual-Information Regularization with
Pre-trained Models", ECCV 2022; code: kakaobrain/miro), Mutual Information Regularization with Oracle.

An oracle model, one that generalises to every domain, is approximated by the pretrained model
f0. MIRO trains f while keeping the mutual information between its intermediate features z_l and
f0's, z0_l, high, through the variational lower bound of a Gaussian q(z0_l | z_l) =
N(mu_l(z_l), Sigma_l(z_l)) for each feature layer l:

    L      = CE(f(x), y) + lambda * sum_l R_l
    R_l    = 1/2 * mean[ (z0_l - mu_l(z_l))^2 / Sigma_l(z_l) + log Sigma_l(z_l) ]

the mean running over the batch and every element of the feature map, as MIRO's code computes
it. The mean encoder mu_l is the identity; the variance encoder Sigma_l is diagonal and constant
per channel (the paper's bias-only encoder), Sigma_l = softplus(b_l) + eps with eps = 1e-5 and
b_l starting at softplus^-1(0.1 - eps), so that Sigma_l starts at 0.1. The variance encoders learn
at lr * lr_mult. f0 is the featurizer as built (pretrained), copied once and frozen: no gradient,
always in eval mode. The feature layers are the backbone's `stage_sites()` (the stem and each
stage, domainbed/networks/registry.py); `feat_layers` stem_block takes them all, block all but
the stem, as MIRO's code.

Hparams (declared below): `ld` (lambda; 0.1 as MIRO's config, the random search draws one of
0.001, 0.01, 0.1, 1.0, the values MIRO's README reports searching), `lr_mult` (10, MIRO's config;
not searched), `feat_layers` (stem_block). MIRO's own config has SWAD off, so `own_run_settings`
sets `swad: False`: a MIRO line without `--swad True` trains without weight averaging, as in
MIRO's repository, while the SWAD family's lines keep SWAD's config.yaml.

Differences from MIRO's code (domainbed/algorithms/miro.py, networks/ur_networks.py), and why:
- The feature layers are found through the backbone contract (forward hooks on `stage_sites()`)
  instead of MIRO's tables of module names per backbone family, so any backbone that declares
  them works; the backbones declare the layers MIRO's tables name (ResNet: maxpool and layer1-4;
  RegNet: stem and block1-4; ViT: patch embedding and the last block of each quarter).
- f0 is a deep copy of the featurizer as built, where MIRO's code builds the backbone a second
  time: the same weights when pretrained; with `--pretrained False` (tests) f0 is f's own random
  start, where MIRO's code would draw a second one.
- BatchNorm of f follows the backbone's `freeze_bn` (True by default, SWAD's and MIRO's choice;
  a backbone trained from scratch updates its statistics), where MIRO's code always freezes it.
- f0, the mean and the variance encoders are training-only (`TRAINING_ONLY`): weight averages
  and saved final models leave them out, as MIRO's `get_forward_model` hands SWAD the network
  only; quantization (`--quant 1`) keeps f0 in float.
- Any image size works (MIRO's code asserts 224 x 224), and the MNIST CNN (28 x 28 images) and
  AlexNet declare feature layers too.
"""

import contextlib
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.errors import UsageError
from domainbed.hparams.rules import choice, nonnegative_float, positive_float

FEAT_LAYERS = ("stem_block", "block")
SIGMA_INIT = 0.1
SIGMA_EPS = 1e-5


def feature_layers(featurizer: nn.Module, feat_layers: str) -> list:
    """The modules whose outputs MIRO regularises: the featurizer's `stage_sites()`, without the
    stem for `feat_layers` block."""
    if not hasattr(featurizer, "stage_sites"):
        raise UsageError(f"MIRO regularises a backbone's feature layers, and {type(featurizer).__name__} declares "
                         "none (no stage_sites()); valid: images with a backbone that declares them, "
                         "e.g. --backbone resnet50")
    sites = featurizer.stage_sites()
    layers = sites if feat_layers == "stem_block" else sites[1:]
    if not layers:
        raise UsageError(f"MIRO found no feature layer: {type(featurizer).__name__}.stage_sites() gives {len(sites)} "
                         f"and feat_layers {feat_layers!r} keeps none; valid: feat_layers stem_block")
    return layers


def channel_shape(shape) -> tuple:
    """The shape of a per-channel parameter for features of `shape` (a batch of one): channels
    are dim 1 of (B, C, H, W) maps and of (B, C) vectors, the last dim of token sequences."""
    if len(shape) == 4:
        return (1, shape[1], 1, 1)
    if len(shape) == 3:
        return (1, 1, shape[2])
    if len(shape) == 2:
        return (1, shape[1])
    raise UsageError(f"MIRO's feature layers must output (B, C, H, W) maps, (B, N, C) tokens or (B, C) "
                     f"vectors, not shape {tuple(shape)}")


class VarianceEncoder(nn.Module):
    """Sigma(z) of one feature layer: diagonal, one variance per channel, softplus(b) + eps."""

    def __init__(self, shape, init: float = SIGMA_INIT, eps: float = SIGMA_EPS):
        super().__init__()
        self.eps = eps
        # softplus^-1(init - eps), so that the variance starts at `init`
        self.b = nn.Parameter(torch.full(channel_shape(shape), init - eps).expm1().log())

    def forward(self, z):
        return F.softplus(self.b) + self.eps


class Frozen(nn.Module):
    """A module that never learns: no gradient, always in eval mode (BatchNorm and dropout off)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x):
        return self.module(x)


class StageOutputs(nn.Module):
    """The outputs of the feature layers in the forward passes run inside `capture()`.

    The forward hooks stay on the layers once put there (`watch`), inert outside `capture()`, so a
    copy of the algorithm (weight averaging) carries inert hooks of its own copy and torch.compile
    sees the same hooks at every step."""

    def __init__(self):
        super().__init__()
        self.recording = False
        self.outputs = {}

    def watch(self, sites) -> None:
        """Hook every one of `sites` not hooked yet (a quantization swap may replace a site)."""
        for site in sites:
            if not any(getattr(hook, "__self__", None) is self for hook in site._forward_hooks.values()):
                site.register_forward_hook(self.record)

    def record(self, module, args, output):
        if self.recording:
            if not torch.is_tensor(output):
                raise UsageError(f"MIRO's feature layer {type(module).__name__} returns {type(output).__name__}; "
                                 "valid: a tensor")
            self.outputs[module] = output

    @contextlib.contextmanager
    def capture(self):
        """Yields {layer: output} of the forward passes run inside; emptied on leaving, so that no
        activation outlives the step or reaches a copy."""
        self.outputs, self.recording = {}, True
        try:
            yield self.outputs
        finally:
            self.outputs, self.recording = {}, False


@register_algorithm("MIRO")
class MIRO(ERM):
    """ERM's network trained with MIRO's regulariser towards the frozen pretrained featurizer
    `pre_featurizer` (f0), through per-layer mean and variance encoders (module docstring)."""

    CONTRACT_INPUT = "images"  # regularises the outputs of a backbone's stages
    TRAINING_ONLY = ("pre_featurizer", "mean_encoders", "var_encoders")

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("ld", 0.1, lambda r: float(r.choice([0.001, 0.01, 0.1, 1.0])), valid=nonnegative_float(),
               help="lambda, the weight of MIRO's mutual-information regulariser")
        hparam("lr_mult", 10.0, valid=positive_float(), help="learning-rate multiplier of MIRO's variance encoders")
        hparam("feat_layers", "stem_block", valid=choice(FEAT_LAYERS),
               help="MIRO's feature layers: stem_block (the stem and every stage) or block (every stage)")

    @classmethod
    def own_run_settings(cls, dataset):
        return {"swad": False}  # MIRO's config.yaml: SWAD only with --swad True

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        # f0: the featurizer as built, copied before any hook is put on it
        self.pre_featurizer = Frozen(copy.deepcopy(self.featurizer))
        self.stages = StageOutputs()
        self.stages.watch(self.layers(self.featurizer))
        self.stages.watch(self.layers(self.pre_featurizer.module))
        with torch.no_grad(), self.stages.capture() as outputs:
            self.pre_featurizer(torch.zeros(1, *input_shape))
            unused = [type(site).__name__ for site in self.layers(self.pre_featurizer.module) if site not in outputs]
            if unused:
                raise UsageError(f"{type(self.featurizer).__name__}.stage_sites() names layers its forward never "
                                 f"runs ({', '.join(unused)}); valid: modules of the forward pass")
            shapes = [outputs[site].shape for site in self.layers(self.pre_featurizer.module)]
        self.mean_encoders = nn.ModuleList(nn.Identity() for _ in shapes)
        self.var_encoders = nn.ModuleList(VarianceEncoder(shape) for shape in shapes)
        self.optimizer = self.new_optimizer([
            {"params": self.network.parameters()},
            {"params": self.var_encoders.parameters(), "lr": hparams["lr"] * hparams["lr_mult"]},
        ])

    def layers(self, featurizer) -> list:
        return feature_layers(featurizer, self.hparams["feat_layers"])

    def regulariser(self, z: list, z0: list):
        """sum_l R_l, R_l = 1/2 mean[(z0_l - mu_l(z_l))^2 / Sigma_l(z_l) + log Sigma_l(z_l)]."""
        total = 0.0
        for z_l, z0_l, mu_l, sigma_l in zip(z, z0, self.mean_encoders, self.var_encoders, strict=True):
            mean, variance = mu_l(z_l), sigma_l(z_l)
            total = total + ((z0_l - mean).pow(2) / variance + variance.log()).mean() / 2
        return total

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        student, pretrained = self.layers(self.featurizer), self.layers(self.pre_featurizer.module)
        self.stages.watch(student)
        with self.stages.capture() as outputs:
            ce = F.cross_entropy(self.predict(x), y)
            with torch.no_grad():
                self.pre_featurizer(x)
            z = [outputs[site] for site in student]
            z0 = [outputs[site] for site in pretrained]
        reg = self.regulariser(z, z0)
        loss = ce + self.hparams["ld"] * reg
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach(), "reg_loss": reg.detach()}
