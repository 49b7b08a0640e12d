"""EQRM: Eastwood, Robey, Singh, von Kügelgen, Hassani, Pappas & Schölkopf, "Probable Domain
Generalization via Quantile Risk Minimization", NeurIPS 2022, Algorithm 1, as DomainBed's `EQRM`.

With R_e the cross-entropy of training domain e, the loss is the alpha-quantile
(alpha = `eqrm_quantile`) of a Gaussian kernel density estimate of the risks {R_e}:

    F(t) = mean_e Phi((t - R_e) / h),   h = 1.06 std(R) m^(-1/5)   (Gauss-optimal bandwidth)
    loss = F^{-1}(alpha), found by 32 bisection steps on [min R + h Phi^{-1}(alpha),
                                                          max R + h Phi^{-1}(alpha)]

and it is differentiated through the bisection arithmetic (the result is a convex combination of
the bracket ends, which depend on min R, max R and h), as DomainBed does.

Burn-in: for the first `eqrm_burnin_iters` steps the loss is ERM's mean risk; at step
`eqrm_burnin_iters` the optimizer is reset and its learning rate becomes `eqrm_lr`. The step is
`self.step`, set by the trainer's `on_step_begin`, so resumption continues the schedule exactly
(DomainBed counts calls in a buffer).

DomainBed quirk reproduced (it changes published numbers): the reset fires on exact equality
step == eqrm_burnin_iters; the random search draws that hparam as a float (10**U(2.5, 3.5)), so
in DomainBed's sweeps the reset, and the switch to `eqrm_lr`, never happens, while the loss does
switch to the quantile after the burn-in.

Differences from DomainBed's code: the bisection runs all 32 steps with `torch.where` instead of
stopping early on a host-side comparison (same value: a converged bracket is a fixed point); the
quantile is computed in the risks' dtype (DomainBed promotes it to float64 through its float64
`alpha` buffer); the optimizer is reset in place (its state cleared, its learning rate set to
`eqrm_lr`) rather than replaced, so parameters added to it later (quantization) stay in it, and
it is the base optimizer of the hparams (Adam by default, as DomainBed's).
"""

import torch
import torch.nn.functional as F

from domainbed import distributed
from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm

BISECTION_STEPS = 32


def kde_quantile(risks, alpha: float):
    """The alpha-quantile of the Gaussian KDE of `risks` (1-D), by bisection on its CDF."""
    r, _ = torch.sort(risks)
    h = 1.06 * r.std() * len(r) ** -0.2
    z_alpha = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(alpha, dtype=r.dtype, device=r.device))
    lo, hi = r[0] + h * z_alpha, r[-1] + h * z_alpha
    normal = torch.distributions.Normal(r.detach(), h.detach())
    k = (lo + hi) / 2
    for _ in range(BISECTION_STEPS):
        above = normal.cdf(k.detach()).mean() > alpha
        lo, hi = torch.where(above, lo, k), torch.where(above, k, hi)
        k = (lo + hi) / 2
    return k


@register_algorithm("EQRM")
class EQRM(ERM):
    DATA_PARALLEL = True  # the per-domain risks whose quantile is minimised are the whole batch's (global_mean)

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("eqrm_quantile", 0.75, lambda r: float(r.uniform(0.5, 0.99)), help="the quantile of the per-domain risks that is minimised")
        # a float draw, as DomainBed's: see the exact-equality reset quirk above
        hparam("eqrm_burnin_iters", 2500, lambda r: float(10 ** r.uniform(2.5, 3.5)),
               help="steps of plain ERM before the quantile risk (then the optimizer restarts)")
        hparam("eqrm_lr", 1e-6, lambda r: float(10 ** r.uniform(-7, -5)), help="learning rate after the burn-in")

    def update(self, minibatches):
        risks = torch.stack([F.cross_entropy(self.network(x), y) for x, y in minibatches])
        risks = distributed.global_mean(risks)  # the whole batch's under data parallelism
        burnin = self.hparams["eqrm_burnin_iters"]
        loss = risks.mean() if self.step < burnin else kde_quantile(risks, self.hparams["eqrm_quantile"])
        if self.step == burnin:
            # as IRM / VREx: Adam's moments do not fit the jump in gradient magnitudes
            self.optimizer.state.clear()
            for group in self.optimizer.param_groups:
                group["lr"] = self.hparams["eqrm_lr"]

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}
