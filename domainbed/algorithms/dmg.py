"""DMG: Domain-specific Masks for Generalization.

Chattopadhyay, Balaji, Hoffman, "Learning to Balance Specificity and Invariance for In and Out of
Domain Generalization", ECCV 2020. Official code: prithv1/DMG (`models/supermasks.py`,
`models/subnetwork_supermask_model.py`, `trainers/subnetwork_supermask_trainer.py`).

Every source domain d has, at every masked layer, real mask logits theta_d (one per unit) and
mask probabilities p_d = sigmoid(theta_d). A sample of domain d multiplies the layer's input by
m = (b - p_d).detach() + p_d with b ~ Bernoulli(p_d): a hard draw forward, the gradient of p_d
backward (straight-through). The loss is

    CE + overlap_lambda * sum_layers mean_{d < d'} IoU(p_d, p_d')
       + sparsity_lambda * sum_layers sum_d sum(p_d) / width,
    IoU(a, b) = (sum(a * b) + 1e-6) / (sum(a + b - a * b) + 1e-6),

and the mask logits have their own Adam optimizer (`mask_lr`). A training domain i is predicted
with its own mask thresholded, p_i > 0.5 (in-domain validation, `predict(x, env=i)`); an unseen
domain with the average over the source domains d of the logits under the soft masks p_d.

Masked layers (`mask_layers`, comma-separated): `fc`, the featurizer's output (the head's
input; default); on ResNets also `layer3`, `layer4`, the inputs of those stages, one mask per
channel broadcast over H, W (the official `POLICY_CONV_MODE: True`); on AlexNet `fc6`, `fc7`,
the inputs of those layers (with `fc`, the official `classifier.1,classifier.4,classifier.6`);
on timm's CNNs the inputs of their last two stages (`layer3`, `layer4`; `s3`, `s4` on RegNets;
`stage3`, `stage4` on ConvNeXt); ViTs offer `fc` only (docs/backbones.md).
Masks inside the featurizer act through forward pre-hooks, only while DMG's own forward runs.

Where we differ from the official code, and why:
- The sparsity penalty is divided by the layer's width (the issue's choice): the official sum
  makes one lambda mean very different things for a 512- and a 4096-unit layer. Its default
  weight is 0, as in the official configs, so defaults are unaffected.
- With a single source domain there is no pair; the overlap penalty is 0 (the official code
  divides by zero).
- As the official supermask trainer does (`set_dropout_eval`), the featurizer's dropout stays in
  eval mode during training: the masks are the stochastic part. `resnet_dropout`,
  `vit_dropout` and `mlp_dropout` must therefore be 0.
- Masks on ResNet stages are per channel only; the official per-unit (C*H*W) masks for
  `POLICY_CONV_MODE: False` are not offered.
- The overlap terms of all layers are summed, as the official code does; the IoU is computed
  for all pairs at once from the Gram matrix of the probabilities (same value).
- The mask optimizer's weight decay is the model's `weight_decay` (the official configs use the
  same value for both); the official exponential learning-rate decay is not applied (the
  harness has no schedule for any method).
- One forward per unseen-domain prediction when only `fc` is masked (the features are shared by
  the source domains' masks); the official code runs the whole network once per domain.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.errors import UsageError, unknown_choice
from domainbed.hparams.rules import choice, nonnegative_float, positive_float
from domainbed.hparams.declare import SMALL_IMAGES

HEAD = "fc"
MASK_INITS = ("random_uniform", "scalar")
SMOOTH = 1e-6  # official supermasks.SMOOTH


def backbone_sites(featurizer) -> dict:
    """name -> (module whose input can be masked, width of that input) inside `featurizer`,
    from its `mask_sites()` (domainbed/networks/registry.py); none: only `fc` can be masked."""
    return featurizer.mask_sites() if hasattr(featurizer, "mask_sites") else {}


def _mean_pair_iou(p):
    """Mean soft IoU over the pairs of rows of p (num_domains, width); 0 without a pair."""
    n = len(p)
    if n < 2:
        return p.new_zeros(())
    intersection = p @ p.T
    sizes = p.sum(1)
    iou = (intersection + SMOOTH) / (sizes[:, None] + sizes[None, :] - intersection + SMOOTH)
    pairs = torch.triu_indices(n, n, offset=1, device=p.device)
    return iou[pairs[0], pairs[1]].mean()


class DomainMasks(nn.Module):
    """Per-domain mask logits theta of every masked layer: `logits[name]` is (num_domains, width)."""

    def __init__(self, num_domains: int, widths: dict, init: str, init_scalar: float):
        super().__init__()

        def initial(width):
            if init == "random_uniform":
                return torch.rand(num_domains, width)
            return torch.full((num_domains, width), float(init_scalar))

        self.logits = nn.ParameterDict({name: nn.Parameter(initial(width)) for name, width in widths.items()})

    @property
    def names(self):
        return list(self.logits.keys())

    def probs(self, name):
        return torch.sigmoid(self.logits[name])

    def overlap_penalty(self):
        """sum over layers of the mean over domain pairs of the soft IoU of their p."""
        return torch.stack([_mean_pair_iou(self.probs(name)) for name in self.names]).sum()

    def sparsity_penalty(self):
        """sum over layers and domains of sum(p) / width."""
        return sum(self.probs(name).sum() / self.logits[name].shape[1] for name in self.names)


class MaskedNetwork(nn.Module):
    """featurizer -> head with the masks of `masks` applied; `forward(x, env)` is DMG's prediction."""

    def __init__(self, featurizer, classifier, masks: DomainMasks, sites: dict):
        super().__init__()
        self.featurizer = featurizer
        self.classifier = classifier
        self.masks = masks
        self.internal = [name for name in masks.names if name != HEAD]
        self._active = {}
        for name in self.internal:
            sites[name].register_forward_pre_hook(functools.partial(self._mask_input, name))

    def _mask_input(self, name, module, args):
        mask = self._active.get(name)
        if mask is None:
            return None
        x = args[0]
        return (x * mask.view(*mask.shape, *[1] * (x.dim() - 2)), *args[1:])

    def logits(self, x, masks: dict):
        """Logits with `masks[name]` ((B or 1, width)) multiplying the input of each masked layer."""
        self._active = {name: masks[name] for name in self.internal}
        try:
            features = self.featurizer(x)
        finally:
            self._active = {}
        if HEAD in masks:
            features = features * masks[HEAD]
        return self.classifier(features)

    def forward(self, x, env=None):
        probs = {name: self.masks.probs(name) for name in self.masks.names}
        if env is not None:
            return self.logits(x, {name: (p[env:env + 1] > 0.5).to(p.dtype) for name, p in probs.items()})
        n_domains = len(probs[self.masks.names[0]])
        if self.internal:
            per_domain = [self.logits(x, {name: p[d:d + 1] for name, p in probs.items()}) for d in range(n_domains)]
        else:
            features = self.featurizer(x)
            per_domain = [self.classifier(features * probs[HEAD][d]) for d in range(n_domains)]
        return torch.stack(per_domain).mean(0)


@register_algorithm("DMG")
class DMG(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        # the official configs' keys (prithv1/DMG)
        hparam("resnet_dropout", 0.0)
        hparam("vit_dropout", 0.0)
        hparam("mlp_dropout", 0.0)
        hparam("mask_layers", "fc", help="comma-separated layers that get per-domain masks (fc: the features before the head)")
        hparam("momentum", 0.9)  # the official code's SGD momentum, used with --optimizer sgd
        hparam("mask_init", "random_uniform", valid=choice(MASK_INITS), help="initial mask values: random_uniform or scalar")
        hparam("mask_init_scalar", 1.0, help="the initial mask value with mask_init scalar")
        hparam("overlap_lambda", 0.1, lambda r: float(10 ** r.uniform(-2, 0)), valid=nonnegative_float(),
               help="weight of the penalty on the overlap of the domains' masks")
        hparam("sparsity_lambda", 0.0, valid=nonnegative_float(), help="weight of the L1 penalty on the masks")
        if dataset in SMALL_IMAGES:
            hparam("mask_lr", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)), valid=positive_float(),
                   help="learning rate of the masks' own Adam")
        else:
            hparam("mask_lr", 1e-4, lambda r: float(10 ** r.uniform(-5, -3)), valid=positive_float(),
                   help="learning rate of the masks' own Adam")
    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        for name in ("resnet_dropout", "vit_dropout", "mlp_dropout"):
            if hparams.get(name, 0.0) > 0:
                raise UsageError(f"DMG keeps the featurizer's dropout off, as the official code; "
                                 f"set {name} to 0 (got {hparams[name]!r})")
        if hparams["mask_init"] not in MASK_INITS:
            raise unknown_choice("mask_init", hparams["mask_init"], MASK_INITS)
        sites = backbone_sites(self.featurizer)
        valid = [HEAD, *sites]
        layers = hparams["mask_layers"]
        names = [n.strip() for n in (layers.split(",") if isinstance(layers, str) else layers) if n.strip()]
        if not names:
            raise UsageError(f"mask_layers is empty; valid: {', '.join(valid)}")
        for name in names:
            if name not in valid:
                raise unknown_choice("mask layer", name, valid)
        names = list(dict.fromkeys(names))
        widths = {name: self.featurizer.n_outputs if name == HEAD else sites[name][1] for name in names}
        self.masks = DomainMasks(num_domains, widths, hparams["mask_init"], hparams["mask_init_scalar"])
        self.network = MaskedNetwork(self.featurizer, self.classifier, self.masks,
                                     {name: module for name, (module, _) in sites.items()})
        self.mask_optimizer = torch.optim.Adam(self.masks.parameters(), lr=hparams["mask_lr"],
                                               weight_decay=hparams["weight_decay"])
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.featurizer.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
        return self

    def optimizers(self):
        return {"optimizer": self.optimizer, "mask_optimizer": self.mask_optimizer}

    def sampled_masks(self, domains):
        """Straight-through Bernoulli masks, (B, width) per layer: sample i uses its domain's p."""
        masks = {}
        for name in self.masks.names:
            p = self.masks.probs(name)[domains]
            b = torch.bernoulli(p.detach())
            masks[name] = (b - p).detach() + p
        return masks

    def update(self, minibatches):
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        domains = torch.cat([torch.full_like(y, d) for d, (_, y) in enumerate(minibatches)])
        ce = F.cross_entropy(self.network.logits(all_x, self.sampled_masks(domains)), all_y)
        overlap = self.masks.overlap_penalty()
        sparsity = self.masks.sparsity_penalty()
        loss = ce + self.hparams["overlap_lambda"] * overlap + self.hparams["sparsity_lambda"] * sparsity
        self.optimizer.zero_grad(set_to_none=True)
        self.mask_optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        self.optimizer_step(self.mask_optimizer)
        return {"loss": loss.detach(), "ce": ce.detach(), "overlap": overlap.detach(), "sparsity": sparsity.detach()}

    def predict(self, x, env=None):
        if env is not None and not 0 <= env < self.num_domains:
            raise UsageError(f"env {env} is not a training domain; valid: 0 to {self.num_domains - 1}")
        return self.network(x, env)
