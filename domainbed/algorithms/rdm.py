"""RDM: Nguyen, Do, Duong & Nguyen, "Domain Generalisation via Risk Distribution Matching", WACV
2024, as DomainBed's `RDM`.

A domain is characterised by the distribution of its per-sample risks r_e = {CE(f(x_i), y_i)}.
Instead of the variance of all the domains' risk distributions (one MMD per domain), RDM matches
just two: that of the worst domain e* = argmax_e R_e (R_e = mean r_e) and the aggregate of all
domains' risks r_all, with the biased squared MMD under a sum of eight RBF kernels
(g in 1e-4 ... 1e3, `coral.gaussian_mmd` on the scalar risks):

    L = mean_e R_e + lambda_t * MMD^2(r_e*, r_all) + v_t * (Var(r_all) + Var(r_e*))

lambda_t = `rdm_lambda` and v_t = `variance_weight` from update `rdm_penalty_anneal_iters` on,
0 before (plain ERM); at that update the optimizer restarts with learning rate `rdm_lr`. The
variance term is DomainBed's (`variance_weight`, 0 on TerraIncognita, OfficeHome, DomainNet).
e* is picked on the values of R_e; the gradient flows through both risk samples.

Departures from DomainBed's code (algorithms.RDM):
- Reproduced: the anneal counter is a buffer (`update_count`, so resumption keeps it), the
  penalties are off (weight 0, not 1 as IRM's) before the anneal, the variances are unbiased, and
  DomainBed's dataset-dependent defaults and draws (its RDM batch size of 88, 40 on DomainNet and
  TerraIncognita, included).
- The optimizer restarts in place (its state cleared, its learning rate set to `rdm_lr`) instead
  of being replaced by a new Adam, so parameters added to it later (quantization's step sizes)
  stay in it; it is the base optimizer of the hparams (Adam by default, as DomainBed's).
- The risks of each domain stay a separate vector, so domains with unequal batch sizes work and a
  single training domain matches its risks with themselves (penalty 0); DomainBed stacks them
  into a matrix and squeezes it, which with one domain makes r_e* the first sample's risk alone.
- Devices follow the inputs (DomainBed builds the risk vector with `.cuda()`); the update returns
  `loss` (the total), `erm_loss` and the two penalties (DomainBed: `total_loss` and the others,
  plus the counter and `rdm_lambda`).
"""

import torch
import torch.nn.functional as F

from domainbed.algorithms.coral import RBF_GAMMAS, gaussian_mmd
from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.algorithms.update_count import count_update, register_update_count, updates_so_far
from domainbed.hparams.declare import SMALL_IMAGES
from domainbed.hparams.rules import int_at_least, nonnegative_float, positive_float

RDM_GAMMAS = (1e-4, *RBF_GAMMAS)


@register_algorithm("RDM")
class RDM(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        meaning = "weight lambda of the MMD between the worst domain's and all domains' risk distributions"
        if dataset == "DomainNet":
            hparam("rdm_lambda", 0.5, lambda r: float(r.uniform(0.1, 1.0)), valid=nonnegative_float(), help=meaning)
        elif dataset in ("PACS", "TerraIncognita"):
            hparam("rdm_lambda", 5.0, lambda r: float(r.uniform(1.0, 10.0)), valid=nonnegative_float(), help=meaning)
        else:
            hparam("rdm_lambda", 5.0, lambda r: float(r.uniform(0.1, 10.0)), valid=nonnegative_float(), help=meaning)
        meaning = "updates of plain ERM before the penalties apply (then the optimizer restarts at rdm_lr)"
        if dataset == "DomainNet":
            hparam("rdm_penalty_anneal_iters", 2400, lambda r: int(r.uniform(1500, 3000)), valid=int_at_least(0),
                   help=meaning)
        else:
            hparam("rdm_penalty_anneal_iters", 1500, lambda r: int(r.uniform(800, 2700)), valid=int_at_least(0),
                   help=meaning)
        meaning = "weight of the variances of the worst domain's and all domains' risks"
        if dataset in ("TerraIncognita", "OfficeHome", "DomainNet"):
            hparam("variance_weight", 0.0, lambda r: float(r.choice([0.0])), valid=nonnegative_float(), help=meaning)
        else:
            hparam("variance_weight", 0.004, lambda r: float(r.uniform(0.001, 0.007)), valid=nonnegative_float(),
                   help=meaning)
        hparam("rdm_lr", 1.5e-5, lambda r: float(r.uniform(8e-6, 2e-5)), valid=positive_float(),
               help="learning rate from the end of the anneal on")
        if dataset not in SMALL_IMAGES:
            if dataset in ("DomainNet", "TerraIncognita"):
                hparam("batch_size", 40, lambda r: int(r.uniform(30, 60)))
            else:
                hparam("batch_size", 88, lambda r: int(r.uniform(70, 100)))

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        register_update_count(self)

    def update(self, minibatches):
        anneal = self.hparams["rdm_penalty_anneal_iters"]
        annealed = updates_so_far(self) >= anneal
        lambda_t = self.hparams["rdm_lambda"] if annealed else 0.0
        v_t = self.hparams["variance_weight"] if annealed else 0.0

        logits = self.predict(torch.cat([x for x, _ in minibatches])).split([len(y) for _, y in minibatches])
        r = [F.cross_entropy(logits_e, y, reduction="none") for logits_e, (_, y) in zip(logits, minibatches)]
        R = torch.stack([r_e.mean() for r_e in r])
        erm_loss = R.mean()
        r_worst = r[int(R.argmax())]
        r_all = torch.cat(r)
        matching_penalty = gaussian_mmd(r_worst[:, None], r_all[:, None], RDM_GAMMAS)
        variance_penalty = r_all.var() + r_worst.var()
        loss = erm_loss + lambda_t * matching_penalty + v_t * variance_penalty

        if updates_so_far(self) == anneal:
            # DomainBed's fresh Adam: its moments do not fit the jump in gradient magnitudes
            self.optimizer.state.clear()
            for group in self.optimizer.param_groups:
                group["lr"] = self.hparams["rdm_lr"]
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        count_update(self)
        return {"loss": loss.detach(), "erm_loss": erm_loss.detach(), "matching_penalty": matching_penalty.detach(),
                "variance_penalty": variance_penalty.detach()}
