"""CAD and CondCAD: Ruan, Dubois & Maddison, "Optimal Representations for Covariate Shift",
ICLR 2022, the contrastive adversarial domain bottleneck, as DomainBed's `CAD` and `CondCAD`.

A bottleneck that removes the domain d from the representation z = Phi(x) (CAD: I(D; Z), CondCAD:
I(D; Z | Y)) is estimated contrastively on the pooled minibatch. With u_i = z_i (or a projection
of it, then L2-normalised, when `is_project` / `is_normalized`) and s_ij = u_i . u_j / tau, every
sample i predicts which other samples j share its domain from

    p_ij = exp(s_ij) / sum_{k in K_i} exp(s_ik),   K_i = {k != i}  (CondCAD: {k != i, y_k = y_i})

and the bottleneck makes that prediction fail (`is_flipped`, the default: maximise the
probability of the other domains; else minimise that of its own domain):

    flipped:  l_i = -(tau / tau_0) log sum_{j in K_i, d_j != d_i} p_ij
    else:     l_i =  (tau / tau_0) log sum_{j in K_i, d_j == d_i} p_ij

with tau_0 = 0.07 (the base temperature of supervised contrastive learning, which the loss is
modelled on). L_bn is the mean of l_i over the rows i that have a term (below), and

    loss = CE(h(z), y) + lmbda * L_bn

Departures from DomainBed's code (algorithms.AbstractCAD):
- Reproduced (it changes which rows are averaged): unconditional CAD averages only over the
  samples that have another sample of their own label in the batch, although its loss does not
  otherwise use labels; CondCAD averages over the samples with a same-label sample from another
  domain (flipped) or from their own (not flipped).
- DomainBed averages the finite l_i (`finite_mean`), 0 when none is; its infinite rows are the
  ones with no term in the sum (no sample of another domain), which we leave out before the
  logsumexp instead: the same mean, and no nan in the backward of an empty logsumexp.
- DomainBed multiplies the logits by the off-diagonal mask before its max shift, so in the
  non-flipped unconditional loss the sample itself enters its own domain's sum with similarity 0;
  here it does not (the paper's sum over j != i). The random search never draws
  is_flipped=False, so published numbers are unchanged.
- DomainBed's `is_project=True` raises a NameError (an undefined `feature_dim`); here it builds
  the projection (features -> features -> 128, ReLU between) and trains it with the rest. The
  random search never draws it.
- The similarities are computed in float32 with autocast off: under fp16 the unnormalised
  features' dot products over tau overflow, and under bf16 they keep three significant digits.
- Returned stats: `loss` (DomainBed's `total_loss`, also given), `clf_loss` and `bn_loss`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.hparams.rules import nonnegative_float, positive_float

BASE_TEMPERATURE = 0.07
PROJECTION_WIDTH = 128


def masked_logsumexp(s, mask):
    """log sum_{j: mask_ij} exp(s_ij) for every row i (each row must have a term)."""
    return torch.logsumexp(s.masked_fill(~mask, float("-inf")), dim=1)


class AbstractCAD(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("lmbda", 1e-1, lambda r: float(r.choice([1e-4, 1e-3, 1e-2, 1e-1, 1, 1e1, 1e2])),
               valid=nonnegative_float(), help="weight of the contrastive domain bottleneck")
        hparam("temperature", 0.1, lambda r: float(r.choice([0.05, 0.1])), valid=positive_float(),
               help="temperature tau of the bottleneck's similarities")
        hparam("is_normalized", False, lambda r: False, help="L2-normalise the representation before the bottleneck")
        hparam("is_project", False, lambda r: False,
               help="compute the bottleneck on a learned projection (two layers, 128 outputs) of the features")
        hparam("is_flipped", True, lambda r: True,
               help="maximise the probability of other domains (True) instead of minimising that of one's own")

    conditional = False

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        if hparams["is_project"]:
            width = self.featurizer.n_outputs
            self.project = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True),
                                         nn.Linear(width, PROJECTION_WIDTH))
            self.optimizer = self.new_optimizer([*self.network.parameters(), *self.project.parameters()])

    def bottleneck_loss(self, z, y, d):
        """L_bn for representations z, labels y and domains d of the pooled minibatch."""
        u = self.project(z) if self.hparams["is_project"] else z
        tau = self.hparams["temperature"]
        with torch.autocast(u.device.type, enabled=False):
            u = u.float()
            if self.hparams["is_normalized"]:
                u = F.normalize(u, dim=1)
            s = u @ u.T / tau
            others = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
            same_y, same_d = y[:, None] == y[None, :], d[:, None] == d[None, :]
            K = others & same_y if self.conditional else others
            terms = K & (~same_d if self.hparams["is_flipped"] else same_d)
            if self.conditional:
                rows = terms.any(dim=1)
            else:
                rows = (others & same_y).any(dim=1) & terms.any(dim=1)
            if not rows.any():
                return s.new_zeros(())
            log_p = masked_logsumexp(s[rows], terms[rows]) - masked_logsumexp(s[rows], K[rows])
            sign = -1.0 if self.hparams["is_flipped"] else 1.0
            return (sign * tau / BASE_TEMPERATURE * log_p).mean()

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        d = torch.cat([torch.full_like(y, e) for e, (_, y) in enumerate(minibatches)])
        z = self.featurizer(x)
        L_bn = self.bottleneck_loss(z, y, d)
        clf_loss = F.cross_entropy(self.classifier(z), y)
        loss = clf_loss + self.hparams["lmbda"] * L_bn

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        loss = loss.detach()
        return {"loss": loss, "clf_loss": clf_loss.detach(), "bn_loss": L_bn.detach(), "total_loss": loss}


@register_algorithm("CAD")
class CAD(AbstractCAD):
    """The bottleneck on I(D; Z): needs the domains, not the labels (but see the row selection)."""


@register_algorithm("CondCAD")
class CondCAD(AbstractCAD):
    """The bottleneck on I(D; Z | Y): contrasts only samples of the same label."""

    conditional = True
