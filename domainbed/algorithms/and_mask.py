"""AND-mask and SAND-mask: gradient masks by the agreement of the per-domain gradients.

ANDMask: Parascandolo, Neitz, Orvieto, Gresele & Schölkopf, "Learning explanations that are hard
to vary", ICLR 2021. SANDMask: Shahtalebi, Gagnon-Audet, Laleh, Faramarzi, Ahuja & Rish,
"SAND-mask: An Enhanced Gradient Masking Strategy for the Discovery of Invariances in Domain
Generalization", ICML-W 2021. Both as DomainBed's `ANDMask` / `SANDMask`.

With g_e the gradient of domain e's cross-entropy and g_bar their mean, each parameter tensor
gets the step direction

    m * g_bar / (1e-10 + mean(m))

where, elementwise over the tensor, a = |mean_e sign(g_e)| is the sign agreement and
    AND-mask:  m = [a >= tau]
    SAND-mask: m = max(0, tanh(k * (a - tau) / var_e(g_e)))   (unbiased variance; a nan
               variance, one domain, counts as 1e-17, and a nan mask entry as 1e-17)
The rescaling by the kept fraction mean(m) is DomainBed's (and the official code's).

Differences from DomainBed's code: the per-domain gradients come from `self.backward` (one
forward and backward per domain, as DomainBed) so fp16 loss scaling applies; the AND mask and
g_bar / mean(m) are invariant to the loss scale, and SAND-mask divides the variance by the
squared scale so its mask is the unscaled one. DomainBed's SANDMask builds its own Adam with the
default betas; here it is the base optimizer of the hparams (Adam with the same betas by default).
"""

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


class GradientMask(ERM):
    def mask(self, grads):
        """The mask m of one parameter tensor from its stacked per-domain gradients (m x ...)."""
        raise NotImplementedError

    def domain_gradients(self, minibatches, params):
        losses, grads = [], []
        for x, y in minibatches:
            loss = F.cross_entropy(self.network(x), y)
            self.backward(loss)
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad for p in params])
            for p in params:
                p.grad = None
            losses.append(loss.detach())
        return torch.stack(losses), [torch.stack(g) for g in zip(*grads)]

    def update(self, minibatches):
        params = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        losses, grads = self.domain_gradients(minibatches, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                m = self.mask(g)
                p.grad = m * g.mean(0) / (1e-10 + m.mean())
        self.optimizer_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": losses.mean().detach()}


def sign_agreement(grads):
    return torch.sign(grads).mean(0).abs()


@register_algorithm("ANDMask")
class ANDMask(GradientMask):
    DATA_PARALLEL = True  # each domain's gradient is averaged over the processes before the signs are compared

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        # DomainBed: int 1
        hparam("tau", 1.0, lambda r: float(r.uniform(0.5, 1.0)), help="agreement threshold of the gradient signs")

    def mask(self, grads):
        return (sign_agreement(grads) >= self.hparams["tau"]).to(grads.dtype)


@register_algorithm("SANDMask")
class SANDMask(GradientMask):
    DATA_PARALLEL = True  # as ANDMask; the variance is over the domains' (averaged) gradients
    # DomainBed's tau 1.0 makes tanh(k (a - tau)) <= 0 for every agreement a <= 1, so on a fresh
    # network every gradient is masked to zero and nothing trains; 0.5 is a value its search draws
    CONTRACT_HPARAMS = {"tau": 0.5}

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("tau", 1.0, lambda r: float(r.uniform(0.0, 1.0)), help="agreement threshold of the gradient signs")
        hparam("k", 1e1, lambda r: float(10 ** r.uniform(-3, 5)), help="steepness of the smooth agreement mask")

    def mask(self, grads):
        # one domain: no variance (DomainBed's nan, without torch's warning)
        variance = grads.var(0) if len(grads) > 1 else torch.full_like(grads[0], float("nan"))
        # the gradients carry the loss scale s under fp16; the mask is defined on the unscaled ones
        variance = variance / self.loss_scale() ** 2
        variance = variance.masked_fill(variance.isnan(), 1e-17)
        m = torch.tanh(self.hparams["k"] * (sign_agreement(grads) - self.hparams["tau"]) / variance).clamp_min(0)
        return m.masked_fill(m.isnan(), 1e-17)
