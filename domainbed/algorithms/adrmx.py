"""ADRMX: Demirel, Aptoula & Ozkan, "ADRMX: Additive Disentanglement of Domain Features with
Remix Loss", 2023, as DomainBed's `ADRMX`.

Two featurizers give label features z_label and domain features z_domain; their difference is
the domain-invariant part, z_dinv = z_label - z_domain (additive disentanglement: z_label =
z_dinv + z_domain). A discriminator D tries to tell the domain d from z_dinv, adversarially:

    L_D = CE(D(z_dinv), d)

and, alternating as DANN (`d_steps_per_g_step` discriminator updates, then one of the rest),
featurizers and heads minimise

    L = CE(C_label(z_label), y) + CE(C_dinv(z_dinv), y) + dclf_lambda * CE(C_domain(z_domain), d)
        + rmxd_lambda * L_remix + cnt_lambda * (SCL(z_label) + SCL(z_dinv)) - disc_lambda * L_D

C_label, C_dinv and C_domain are DomainBed's three-layer MLP heads; `predict` is
C_label(z_label). SCL is a supervised contrastive loss whose terms weigh samples of the anchor's
domain by w = 0.5 and the others by 1 - w (temperature T = 0.07, cosine similarities s_ij / T):

    SCL = -1 / (|A| + 1) * sum_{i in A} 1/|P_i| sum_{j in P_i} log(w_ij e^{s_ij} / (sum_{k != i} w_ik e^{s_ik} + 1e-5) + 1e-5)

with P_i the other samples of i's class and A the anchors with P_i non-empty. The remix loss
recombines, once per class c, the invariant part of one sample with the domain part of another,
L_remix = (1 / n_classes) sum_c CE(C_label(z_dinv[i_c] + z_domain[j_c]), y[i_c]), skipping classes
with fewer than two samples in the batch (they still count in 1 / n_classes).

DomainBed bug reproduced by default (it is in the authors' code, so in the published numbers),
named `rmxd_index_quirk`: for class c with n_c samples, (i_c, j_c) are the first two entries of a
random permutation of range(n_c), used directly as positions in the batch rather than as
positions among class c's samples. The pairs are thus samples among the first n_c of the batch
(which lists the domains in order), mostly of other classes, and y[i_c] is that sample's own
label. With `rmxd_index_quirk` False, i_c and j_c are two distinct samples of class c (of any
domains). Both draw the permutations as DomainBed does (torch.randperm on the CPU generator,
one per class), so the draws are DomainBed's.

Other departures from DomainBed's code (algorithms.ADRMX, misc.SupConLossLambda):
- Reproduced: both optimizers are Adam at `lr` with betas (beta1, 0.9) and no weight decay (the
  base `optimizer` and `weight_decay` are not read), the counter of the alternation is a buffer,
  SCL's +1 in the normaliser and its two 1e-5 terms, and the remix loss summed over classes with
  one head call per pair (here one call for all pairs: the heads have no batch statistics).
- SCL is computed at once from the similarity matrix, in float32 under any autocast, with anchors that have no
  positive left out by a mask (DomainBed loops over samples and skips a NaN term).
- On a discriminator step the featurizers run without a graph: DomainBed back-propagates L_D into
  them and discards those gradients, so the step is the same.
- With no class of two samples the remix loss is a zero tensor (DomainBed's `.item()` on the int
  0 fails there).
- The remix pairs need each class's count on the host (`remix_pairs`, one read per generator
  step, as DomainBed's loop over classes): on a GPU the one wait of ADRMX's step.
- Module names: `featurizer` / `classifier` are DomainBed's `featurizer_label` /
  `classifier_label_1`, `classifier_dinv` its `classifier_label_2`. Both optimizers are in
  `optimizers()`; the update always returns `loss` (L_D on a discriminator step, L otherwise).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.dann import discriminator_turn
from domainbed.algorithms.registry import register_algorithm
from domainbed.algorithms.update_count import count_update, register_update_count, updates_so_far
from domainbed.hparams.declare import SMALL_IMAGES
from domainbed.hparams.rules import fraction, int_at_least, nonnegative_float

SCL_WEIGHT, SCL_TEMPERATURE, SCL_EPS = 0.5, 0.07, 1e-5
MIX_NUM = 1  # remixed pairs per class and update


def supervised_contrastive(z, y, d, w: float = SCL_WEIGHT, temperature: float = SCL_TEMPERATURE):
    """SCL of features z (n x k) with labels y and domains d, as in the module docstring; in
    float32 whatever the autocast (e^{s / T} spans six decades)."""
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=1)
        s = z @ z.t() / temperature
    others = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    weighted = torch.where(d[:, None] == d[None, :], w, 1 - w) * s.exp() * others
    denominator = weighted.sum(1, keepdim=True) + SCL_EPS
    positives = (y[:, None] == y[None, :]) & others
    n_positives = positives.sum(1)
    log_fraction = torch.log(weighted / denominator + SCL_EPS)
    per_anchor = (log_fraction * positives).sum(1) / n_positives.clamp_min(1)
    anchors = n_positives > 0
    return -(per_anchor * anchors).sum() / (anchors.sum() + 1)


@register_algorithm("ADRMX")
class ADRMX(Algorithm):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("cnt_lambda", 1.0, lambda r: float(r.choice([1.0])), valid=nonnegative_float(),
               help="weight of the supervised contrastive losses on the label and invariant features")
        hparam("dclf_lambda", 1.0, lambda r: float(r.choice([1.0])), valid=nonnegative_float(),
               help="weight of the domain classifier's loss on the domain features")
        hparam("disc_lambda", 0.75, lambda r: float(r.choice([0.75])), valid=nonnegative_float(),
               help="weight of the adversarial discriminator loss on the invariant features")
        hparam("rmxd_lambda", 1.0, lambda r: float(r.choice([1.0])), valid=nonnegative_float(),
               help="weight of the remix loss")
        hparam("d_steps_per_g_step", 2, lambda r: int(r.choice([2])), valid=int_at_least(1),
               help="discriminator updates per update of the featurizers and heads")
        hparam("beta1", 0.5, lambda r: float(r.choice([0.5])), valid=fraction(), help="Adam's beta1 of both optimizers")
        hparam("rmxd_index_quirk", True,
               help="remix the samples at DomainBed's positions (its indexing bug, in the published runs) "
                    "instead of two samples of the class")
        hparam("mlp_width", 256, lambda r: int(r.choice([256])))
        hparam("mlp_depth", 9, lambda r: int(r.choice([8, 9, 10])))
        hparam("mlp_dropout", 0.0, lambda r: float(r.choice([0])))
        if dataset in SMALL_IMAGES:
            hparam("lr", 3e-3, lambda r: float(r.choice([5e-4, 1e-3, 2e-3, 3e-3])))
        else:
            hparam("lr", 3e-5, lambda r: float(r.choice([2e-5, 3e-5, 4e-5, 5e-5])))

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        register_update_count(self)
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.featurizer_domain = networks.Featurizer(input_shape, hparams)
        width = self.featurizer.n_outputs
        self.discriminator = networks.MLP(width, num_domains, hparams)
        self.classifier = networks.Classifier(width, num_classes, is_nonlinear=True)
        self.classifier_dinv = networks.Classifier(width, num_classes, is_nonlinear=True)
        self.classifier_domain = networks.Classifier(width, num_domains, is_nonlinear=True)
        self.network = nn.Sequential(self.featurizer, self.classifier)
        betas = (hparams["beta1"], 0.9)
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=hparams["lr"], betas=betas)
        self.gen_optimizer = torch.optim.Adam(
            [*self.featurizer.parameters(), *self.featurizer_domain.parameters(), *self.classifier.parameters(),
             *self.classifier_dinv.parameters(), *self.classifier_domain.parameters()], lr=hparams["lr"], betas=betas)

    def optimizers(self):
        return {"disc_optimizer": self.disc_optimizer, "gen_optimizer": self.gen_optimizer}

    def remix_pairs(self, y):
        """(i_c, j_c) for every class c with two samples or more, as two index tensors."""
        first, second = [], []
        for c, n_c in enumerate(torch.bincount(y, minlength=self.num_classes).tolist()):
            perm = torch.randperm(n_c)
            if n_c < 2:
                continue
            pair = perm[:2].to(y.device)
            if not self.hparams["rmxd_index_quirk"]:
                pair = (y == c).nonzero().flatten()[pair]
            first.append(pair[0])
            second.append(pair[1])
        return torch.stack(first) if first else None, torch.stack(second) if second else None

    def remix_loss(self, z_dinv, z_domain, y):
        i, j = self.remix_pairs(y)
        if i is None:
            return z_dinv.new_zeros((), dtype=torch.float32)
        logits = self.classifier(z_dinv[i] + z_domain[j])
        return F.cross_entropy(logits, y[i], reduction="sum") / (self.num_classes * MIX_NUM)

    def update(self, minibatches):
        count_update(self)
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        d = torch.cat([torch.full_like(y, e) for e, (_, y) in enumerate(minibatches)])

        if discriminator_turn(updates_so_far(self), self.hparams["d_steps_per_g_step"]):
            with torch.no_grad():
                z_dinv = self.featurizer(x) - self.featurizer_domain(x)
            L_D = F.cross_entropy(self.discriminator(z_dinv), d)
            self.disc_optimizer.zero_grad(set_to_none=True)
            self.backward(L_D)
            self.optimizer_step(self.disc_optimizer)
            return {"loss": L_D.detach(), "disc_loss": L_D.detach()}

        hp = self.hparams
        z_label = self.featurizer(x)
        z_domain = self.featurizer_domain(x)
        z_dinv = z_label - z_domain
        L_D = F.cross_entropy(self.discriminator(z_dinv), d)
        ce_label = F.cross_entropy(self.classifier(z_label), y)
        ce_dinv = F.cross_entropy(self.classifier_dinv(z_dinv), y)
        ce_domain = F.cross_entropy(self.classifier_domain(z_domain), d)
        L_remix = self.remix_loss(z_dinv, z_domain, y)
        scl_label = supervised_contrastive(z_label, y, d)
        scl_dinv = supervised_contrastive(z_dinv, y, d)
        L = (ce_label + ce_dinv + hp["dclf_lambda"] * ce_domain + hp["rmxd_lambda"] * L_remix
             + hp["cnt_lambda"] * (scl_label + scl_dinv) - hp["disc_lambda"] * L_D)
        self.disc_optimizer.zero_grad(set_to_none=True)
        self.gen_optimizer.zero_grad(set_to_none=True)
        self.backward(L)
        self.optimizer_step(self.gen_optimizer)
        names = ["loss", "ce_label", "ce_dinv", "ce_domain", "remix", "scl_label", "scl_dinv", "disc_loss"]
        values = [L, ce_label, ce_dinv, ce_domain, L_remix, scl_label, scl_dinv, L_D]
        return {name: value.detach() for name, value in zip(names, values)}

    def predict(self, x, env=None):
        return self.network(x)
