"""RSC: Representation Self-Challenging.

Huang, Wang, Xing, Huang, "Self-Challenging Improves Cross-Domain Generalization", ECCV 2020.
Official code: DeLightCMU/RSC, `Domain_Generalization/models/resnet.py` (the curriculum version
its README calls the update). DomainBed's re-implementation: facebookresearch/DomainBed,
`algorithms.py`, class RSC.

Each step mutes the features the head relies on most for the true class and trains on what is
left, so the network learns to predict from the remaining ones too. Two variants:

`rsc_variant: official` (default), on the featurizer's last map z (B, C, H, W) before pooling:
  1. g = d(sum_i logit_i[y_i]) / dz, on a detached copy of z (the head alone is differentiated).
  2. One draw per batch picks the spatial (probability 0.5) or the channel mode.
     spatial: s[i,h,w] = sum_c z[i,c,h,w] * mean_hw(g)[i,c]; mute the top ceil(HW * 1/3) positions.
     channel: s[i,c] = mean_hw(g)[i,c]; mute the top ceil(C * 1/3.2) channels.
  3. change_i = max(p_before_i - p_after_i - 1e-4, 0) with p the true-class probability without
     and with the mask; only samples whose change is strictly above the value at sorted
     (descending) position round(N * batch_percent) keep their mask.
  4. loss = cross-entropy of the head on pool(z * mask); the gradient reaches the backbone
     through z, so a step costs one backbone forward-backward plus two extra head passes.
  batch_percent follows the official curriculum: 0.3, plus 0.2 every 10 of the official 20
  epochs, here every `rsc_batch_interval` of the run's steps (or `rsc_batch_interval_steps`).

`rsc_variant: domainbed`, DomainBed's RSC exactly, on the pooled features f (B, D): mask the
  features whose gradient is at or above the per-sample (1 - rsc_f_drop_factor) percentile, then
  keep the mask only for samples whose confidence drop is at or above the batch's
  (1 - rsc_b_drop_factor) percentile (numpy's linear percentiles, here torch.quantile).

Ablation axes of the paper, as hparams (official variant): `rsc_drop_strategy` gradient (the
method), activation (mute the strongest activations) or random; `rsc_mode` both (the draw in
step 2), spatial or channel; `rsc_spatial_drop` and `rsc_channel_drop` (feature drop
percentages); `rsc_batch_percent`, `rsc_batch_increment` (0 for a constant percentage).

Where the official code differs from the paper's text, and which we follow:
- Spatial score: the paper averages the gradient over channels; the official code weighs the
  activations by the channel-mean gradient (a Grad-CAM map, step 2). We follow the code.
- Drop percentages: the paper uses p = 1/3 for both modes; the code mutes ceil(C/3.2) channels.
  We follow the code (`rsc_channel_drop` = 1/3.2).
- Batch percentage: the paper fixes it; the code's curriculum raises it. We follow the code.
- Only the code subtracts 1e-4 from the confidence drop and clamps it at 0; we follow the code.

Where we differ from the official code, and why:
- The official code thresholds at `sort(s, descending)[k]`, which crashes when k reaches the row
  length; we use kthvalue for the same threshold and define the ends: k = 0 mutes nothing,
  k >= n mutes everything, and a batch position past the end (round(N * p) >= N, e.g. a batch of
  one with p > 0.5) compares with 0, the floor of the clamped changes.
  Ties at the threshold are kept, as in the official code: fewer than k units may be muted, and
  which ones never depends on how a sort breaks ties.
- A 1x1 map (ResNet at 32 px) and featurizers without a spatial map (the MLP) have no
  positions to mute: `both` then always uses the channel mode, and `spatial` is refused.
- The mode draw uses torch's CPU generator (seeded by the trainer) instead of python's
  `random`; drawing on the host keeps the device stream free of synchronisation.
- Scores and the two confidences are computed in eval mode (the official `self.eval()`), so
  dropout after pooling does not perturb them; the loss uses train mode.
- The official training loop appends a horizontally flipped copy of every batch; the harness's
  augmentation already flips at random, so the batch is left as it is. Its SGD and step
  schedule are replaced by the harness's optimizer.
- Curriculum in steps, not epochs; without a known run length (`n_steps` None, e.g. a direct
  call to `update`) the percentage stays at its first value unless `rsc_batch_interval_steps`
  is set.

The DomainBed variant differs from DomainBed's code only in computing its percentiles with
torch.quantile on the device (in float64, rounded to float32 as DomainBed's torch.Tensor() does)
instead of np.percentile on the host: same linear interpolation, same masks, losses and updates
up to float32 rounding.
"""

import contextlib
import math

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.errors import UsageError, unknown_choice
from domainbed.hparams.rules import choice, fraction, int_at_least

VARIANTS = ("official", "domainbed")
STRATEGIES = ("gradient", "activation", "random")
MODES = ("both", "spatial", "channel")
CONFIDENCE_MARGIN = 1e-4  # official: change = p_before - p_after - 0.0001


def n_muted(n: int, fraction: float) -> int:
    """ceil(n * fraction), rounded first so that 1/3 of 48 is 16 and not 17 by float error."""
    return min(n, math.ceil(round(n * fraction, 9)))


def mute_top(scores, k: int):
    """Keep-mask of `scores` (B, n): 0 where a score is strictly above the (k+1)-th largest of
    its row (the official threshold), 1 elsewhere."""
    n = scores.shape[1]
    if k <= 0:
        return torch.ones_like(scores)
    if k >= n:
        return torch.zeros_like(scores)
    threshold = scores.kthvalue(n - k, dim=1, keepdim=True).values
    return (scores <= threshold).to(scores.dtype)


def challenged(change, batch_percent: float):
    """Which samples keep their mask: change strictly above the value at sorted (descending)
    position round(N * batch_percent); past the end that value is 0."""
    n = change.shape[0]
    position = int(round(n * batch_percent))
    if position >= n:
        return change > 0
    return change > change.kthvalue(n - position).values


def _percentile(x, q: float, **kwargs):
    """np.percentile(x, q) on the device, then rounded to x's dtype as DomainBed's torch.Tensor()
    does. In float64: in float32 the rank q / 100 * (n - 1) is off by up to 1e-5, which moves the
    threshold past an element when the exact rank is an integer (n = 256, q = 200 / 3)."""
    return torch.quantile(x.double(), q / 100, **kwargs).to(x.dtype)


@contextlib.contextmanager
def _eval_mode(module):
    was_training = module.training
    module.train(False)
    try:
        yield
    finally:
        module.train(was_training)


def _check_fraction(hparams, name, high=1.0):
    value = hparams[name]
    if not 0.0 <= value <= high:
        raise UsageError(f"hparam {name} must lie in [0, {high}], got {value!r}")


@register_algorithm("RSC")
class RSC(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        # official variant (DeLightCMU/RSC)
        hparam("rsc_variant", "official", valid=choice(VARIANTS),
               help="official (DeLightCMU/RSC, on the last feature map) or domainbed (on pooled features)")
        hparam("momentum", 0.9)  # the official code's SGD momentum, used with --optimizer sgd
        hparam("rsc_drop_strategy", "gradient", valid=choice(STRATEGIES),
               help="which units are muted: gradient (the method), activation or random")
        hparam("rsc_mode", "both", valid=choice(MODES), help="spatial, channel or both (a random choice per step, as the paper)")
        hparam("rsc_spatial_drop", 1 / 3, lambda r: float(r.uniform(0.1, 0.5)), valid=fraction(),
               help="fraction of spatial positions muted")
        hparam("rsc_channel_drop", 1 / 3.2, lambda r: float(r.uniform(0.1, 0.5)), valid=fraction(),
               help="fraction of channels muted")
        hparam("rsc_batch_percent", 0.3, lambda r: float(r.uniform(0.1, 0.5)), valid=fraction(high_open=False),
               help="fraction of the batch whose features are muted, at the start")
        hparam("rsc_batch_increment", 0.2, valid=fraction(high_open=False), help="added to rsc_batch_percent at every interval")
        hparam("rsc_batch_interval", 0.5, valid=fraction(high_open=False),
               help="fraction of the run's steps between increments of rsc_batch_percent")
        hparam("rsc_batch_interval_steps", 0, valid=int_at_least(0), help="the interval in steps instead (0: use rsc_batch_interval)")
        # DomainBed variant
        hparam("rsc_f_drop_factor", 1 / 3, lambda r: float(r.uniform(0, 0.5)), valid=fraction(),
               help="domainbed variant: fraction of feature units muted")
        hparam("rsc_b_drop_factor", 1 / 3, lambda r: float(r.uniform(0, 0.5)), valid=fraction(),
               help="domainbed variant: fraction of the batch muted")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        for name, valid in (("rsc_variant", VARIANTS), ("rsc_drop_strategy", STRATEGIES), ("rsc_mode", MODES)):
            if hparams[name] not in valid:
                raise unknown_choice(name, hparams[name], valid)
        for name in ("rsc_spatial_drop", "rsc_channel_drop", "rsc_batch_percent", "rsc_batch_increment",
                     "rsc_batch_interval", "rsc_f_drop_factor", "rsc_b_drop_factor"):
            _check_fraction(hparams, name)
        if hparams["rsc_batch_interval_steps"] < 0:
            raise UsageError(f"hparam rsc_batch_interval_steps must be >= 0, got {hparams['rsc_batch_interval_steps']!r}")
        self.has_map = hasattr(self.featurizer, "feature_map")
        if hparams["rsc_mode"] == "spatial" and not self.has_map:
            raise UsageError("rsc_mode 'spatial' needs a featurizer with a spatial map; valid here: both, channel")
        self.drop_f = (1 - hparams["rsc_f_drop_factor"]) * 100
        self.drop_b = (1 - hparams["rsc_b_drop_factor"]) * 100

    def update(self, minibatches):
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        if self.hparams["rsc_variant"] == "domainbed":
            loss, stats = self._domainbed_loss(all_x, all_y), {}
        else:
            loss, stats = self._official_loss(all_x, all_y)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach(), **stats}

    # official variant ----------------------------------------------------------------------

    def batch_percent(self) -> float:
        """The curriculum's batch percentage at `self.step`."""
        interval = self.hparams["rsc_batch_interval_steps"]
        if not interval and self.n_steps:
            interval = max(1, round(self.hparams["rsc_batch_interval"] * self.n_steps))
        stage = self.step // interval if interval else 0
        return min(1.0, self.hparams["rsc_batch_percent"] + stage * self.hparams["rsc_batch_increment"])

    def _feature_map(self, x):
        if self.has_map:
            return self.featurizer.feature_map(x)
        return self.featurizer(x)[:, :, None, None]

    def _head(self, z):
        pooled = self.featurizer.pool(z) if self.has_map else z.flatten(1)
        return self.classifier(pooled)

    def _use_spatial(self, z) -> bool:
        mode = self.hparams["rsc_mode"]
        has_positions = z.shape[2] * z.shape[3] > 1
        if mode == "spatial" and not has_positions:
            raise UsageError(f"rsc_mode 'spatial' needs a feature map larger than 1x1, got {tuple(z.shape[2:])}; "
                             "use larger images or rsc_mode channel")
        if mode == "both":
            return has_positions and float(torch.rand((), device="cpu")) < 0.5
        return mode == "spatial"

    def feature_mask(self, z, g, spatial: bool):
        """The per-sample mask before batch selection: (B, 1, H, W) or (B, C, 1, 1)."""
        B, C, H, W = z.shape
        strategy = self.hparams["rsc_drop_strategy"]
        if spatial:
            if strategy == "gradient":
                scores = (z * g.mean((2, 3), keepdim=True)).sum(1)
            elif strategy == "activation":
                scores = z.sum(1)
            else:
                scores = torch.rand(B, H, W, device=z.device)
            k = n_muted(H * W, self.hparams["rsc_spatial_drop"])
            return mute_top(scores.view(B, H * W), k).view(B, 1, H, W)
        if strategy == "gradient":
            scores = g.mean((2, 3))
        elif strategy == "activation":
            scores = z.mean((2, 3))
        else:
            scores = torch.rand(B, C, device=z.device)
        return mute_top(scores, n_muted(C, self.hparams["rsc_channel_drop"])).view(B, C, 1, 1)

    def self_challenge(self, z, y):
        """(mask, challenged) for the map `z`: the mask broadcasts against z and is all ones for
        the samples that are not challenged."""
        z_d = z.detach().requires_grad_()
        with _eval_mode(self):
            with torch.enable_grad():
                logits = self._head(z_d)
                (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), z_d)
            with torch.no_grad():
                mask = self.feature_mask(z_d, g, self._use_spatial(z))
                p_before = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
                p_after = self._head(z_d * mask).softmax(1).gather(1, y[:, None]).squeeze(1)
                change = (p_before - p_after - CONFIDENCE_MARGIN).clamp_min(0)
                chosen = challenged(change, self.batch_percent())
                mask = torch.where(chosen.view(-1, 1, 1, 1), mask, torch.ones_like(mask))
        return mask, chosen

    def _official_loss(self, x, y):
        z = self._feature_map(x)
        mask, chosen = self.self_challenge(z, y)
        loss = F.cross_entropy(self._head(z * mask), y)
        return loss, {"challenged": chosen.float().mean()}

    # DomainBed variant ---------------------------------------------------------------------

    def _domainbed_loss(self, x, y):
        o = F.one_hot(y, self.num_classes)
        f = self.featurizer(x)
        p = self.classifier(f)
        # Equation (1): gradient of the true-class logits with respect to the features
        (g,) = torch.autograd.grad((p * o).sum(), f)
        # Equation (2): per-sample top-gradient-percentile mask
        percentile_f = _percentile(g, self.drop_f, dim=1, keepdim=True)
        mask_f = g < percentile_f
        # Equations (3), (4): muted predictions
        p_muted = self.classifier(f * mask_f)
        # Section 3.3: batch percentage, on the drop of the true-class probability
        s, s_muted = p.softmax(1), p_muted.softmax(1)
        changes = (s * o).sum(1) - (s_muted * o).sum(1)
        percentile_b = _percentile(changes.detach(), self.drop_b)
        mask_b = (changes < percentile_b).view(-1, 1)
        mask = torch.logical_or(mask_f, mask_b).float()
        # Equation (5): the loss on the features muted over the chosen examples
        return F.cross_entropy(self.classifier(f * mask), y)
