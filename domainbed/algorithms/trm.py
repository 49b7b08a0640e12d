"""TRM: Transfer Risk Minimization. Xu & Jaakkola, "Learning Representations that Support Robust
Transfer of Predictors", arXiv:2110.09940, 2021, as DomainBed's `TRM`.

The transfer risk of a representation Phi is the risk, on a target domain P, of the predictor
w_Q fitted on a source domain Q. Its gradient in Phi has a direct term and, since w_Q depends on
Phi through its optimality (grad_w R_Q(w_Q) = 0), an implicit one, -grad_w R_P^T H_Q^{-1}
d/dPhi grad_w R_Q (the weighted gradient matching of the paper). For the first `iters` updates
the method is ERM; after, each update, with z_e = Phi(x_e) and h the shared head:

    alpha_Q. <- alpha_Q. / sum_P alpha_QP                     (alpha starts at 1 - I)
    w_e <- w_e - 0.1 grad R_e(w_e; sg(z_e)),  30 times         (one linear head per domain)
    for every source Q, over the targets P != Q:
        g_Q = grad_{W_Q} R_Q(w_Q; z_Q)                         (kept in the graph of Phi)
        g_P = grad_{W_Q} sum_P alpha_QP R_P(w_Q; z_P)          (a constant)
        v   = (I - H_Q) g_P + sum_{k=1}^{K} (I - H_Q)^k g_P    (~ H_Q^{-1} g_P, below)
        alpha_QP <- alpha_QP exp(eta alpha_QP R_P(w_Q; z_P))
        T_Q = sum_P alpha_QP R_P(w_Q; z_P) - cos_lambda v . g_Q
    loss = CE(h(z), y) + mean_Q T_Q

W_Q is the weight of w_Q (not its bias), H_Q the Hessian of R_Q(w_Q; sg(z_Q)) in W_Q, and the
Neumann series stops at K = 10 or after the first partial sum with an entry above 10 in
magnitude (that sum is kept). The paper's series, sum_{k=0}^{K} (I - H_Q)^k g_P, starts at
g_P itself; DomainBed's starts at (I - H_Q) g_P, counted twice (a quirk, below). The heads
persist across updates (each fit starts from the last), their 30 steps see the features as
constants, and the only step on Phi and h is the base optimizer's on `loss`. Hparams, DomainBed's: `cos_lambda` (1e-4), `iters` (200),
`groupdro_eta` (eta, 1e-2).

DomainBed quirks reproduced (they change the published numbers), named:
- the exponent of the alpha update is eta times the alpha-weighted risk alpha_QP R_P, not the
  risk alone (DomainBed's `loss_P[i]` carries its weight);
- the direct term's gradient uses the updated alpha_QP: DomainBed weights R_P by
  `alpha[Q, i].data`, updates alpha in place before the backward, and autograd reads the saved
  weight's updated value (`.data` escapes the version check). The gradient-matching term's g_P
  uses the weights before the update, as there. We write the direct term with the updated weights,
  which is DomainBed's gradient; the reported `trm_loss` is therefore that of the updated weights
  (DomainBed reports the value with the old ones);
- the Neumann series lacks its term k = 0 and counts k = 1 twice: DomainBed's running sum is the
  same tensor as its first term, which the in-place `v -= hv` of the first iteration turns into
  (I - H_Q) g_P before the sum adds it again.

Other differences from DomainBed's code (algorithms.TRM):
- The heads, their optimizer and alpha are submodules, an optimizer of `optimizers()` and a
  buffer (DomainBed keeps a python list of `.cuda()` layers and tensors, out of the state dict),
  so checkpoints resume them and devices follow the model. DomainBed builds num_domains + 1 heads
  and never uses the last; we build num_domains (so the draws after construction differ).
- The heads' 30 steps are one SGD optimizer (lr 0.1) over all heads, stepped on gradients from
  `torch.autograd.grad` (DomainBed: one SGD per head, `backward()`): the same steps, as a head's
  risk involves no other head. It is stepped directly, not through `optimizer_step`: its
  gradients are computed in float32 and carry no loss scale.
- The heads' fit and the transfer terms run in float32 with autocast off (DomainBed has no mixed
  precision): the Hessian-vector products of the Neumann series lose too much in bf16 or fp16.
- One base optimizer over Phi and h (DomainBed: two Adams with the same lr and weight decay,
  which step identically); the head h honours `nonlinear_classifier` (DomainBed's TRM head is
  linear whatever it says; its search never sets it). DomainBed's `class_balanced` option (the
  heads' weights reset to h's at every update) is not supported here; its default is off.
- The Neumann series takes the first gradient of R_Q once and differentiates it at every term
  (DomainBed recomputes it each time): the same values.
- The update counter is a buffer; returned stats: `loss`, DomainBed's `nll` and `trm_loss`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.algorithms.update_count import count_update, register_update_count, updates_so_far
from domainbed.errors import UsageError
from domainbed.hparams.rules import int_at_least, nonnegative_float

HEAD_STEPS, HEAD_LR = 30, 0.1
NEUMANN_TERMS, NEUMANN_BOUND = 10, 10.0


def neumann_inverse_hvp(head, z, y, v):
    """DomainBed's Neumann estimate of H^{-1} v, H the Hessian of CE(head(z), y) in head.weight:
    sum_{k=1}^{K} (I - H)^k v + (I - H) v (its first term counted twice, v itself never)."""
    (g,) = torch.autograd.grad(F.cross_entropy(head(z), y), [head.weight], create_graph=True)
    estimate = None
    for _ in range(NEUMANN_TERMS):
        (Hv,) = torch.autograd.grad(g, [head.weight], grad_outputs=v, retain_graph=True)
        v = (v - Hv).detach()
        estimate = 2 * v if estimate is None else estimate + v
        if estimate.abs().max() > NEUMANN_BOUND:  # diverging: DomainBed keeps this partial sum
            break
    return estimate


@register_algorithm("TRM")
class TRM(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("cos_lambda", 1e-4, lambda r: float(10 ** r.uniform(-5, 0)), valid=nonnegative_float(),
               help="weight of the transfer risk's gradient-matching (implicit) term")
        hparam("iters", 200, lambda r: int(10 ** r.uniform(0, 4)), valid=int_at_least(0),
               help="ERM updates before the transfer risk joins the loss")
        hparam("groupdro_eta", 1e-2, lambda r: float(10 ** r.uniform(-3, -1)), valid=nonnegative_float(),
               help="step size of the exponentiated-gradient update of the target domains' weights alpha")

    # the transfer risk from the second update on (the random search draws iters = 1), so the
    # checks see it and a state round trip crosses the switch
    CONTRACT_HPARAMS = {"iters": 1}

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        if num_domains < 2:
            raise UsageError(f"TRM transfers heads between training domains and has {num_domains}; valid: 2 or more "
                             "(fewer --test_envs)")
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.heads = nn.ModuleList(nn.Linear(self.featurizer.n_outputs, num_classes) for _ in range(num_domains))
        self.head_optimizer = torch.optim.SGD(self.heads.parameters(), lr=HEAD_LR)
        self.register_buffer("alpha", torch.ones(num_domains, num_domains) - torch.eye(num_domains))
        register_update_count(self)

    def optimizers(self):
        return {"optimizer": self.optimizer, "head_optimizer": self.head_optimizer}

    def fit_heads(self, z, y):
        """HEAD_STEPS SGD steps of every head w_e on its domain's risk, the features constant."""
        params = [p for p in self.heads.parameters() if p.requires_grad]
        for _ in range(HEAD_STEPS):
            risk = sum(F.cross_entropy(w_e(z_e.detach()), y_e) for w_e, z_e, y_e in zip(self.heads, z, y))
            for p, g in zip(params, torch.autograd.grad(risk, params)):
                p.grad = g
            self.head_optimizer.step()
        self.head_optimizer.zero_grad(set_to_none=True)

    def transfer_risk(self, z, y):
        """mean_Q T_Q, updating alpha; z: the domains' features (float32), in Phi's graph."""
        eta, cos_lambda = self.hparams["groupdro_eta"], self.hparams["cos_lambda"]
        self.alpha.div_(self.alpha.sum(dim=1, keepdim=True))
        self.fit_heads(z, y)
        T = []
        for Q, w_Q in enumerate(self.heads):
            targets = [P for P in range(len(z)) if P != Q]
            (g_Q,) = torch.autograd.grad(F.cross_entropy(w_Q(z[Q]), y[Q]), [w_Q.weight], create_graph=True)
            R_P = torch.stack([F.cross_entropy(w_Q(z[P]), y[P]) for P in targets])
            alpha_Q = self.alpha[Q, targets]
            (g_P,) = torch.autograd.grad((alpha_Q * R_P).sum(), [w_Q.weight], retain_graph=True)
            v = neumann_inverse_hvp(w_Q, z[Q].detach(), y[Q], g_P)
            alpha_Q = alpha_Q * torch.exp(eta * alpha_Q * R_P.detach())
            self.alpha[Q, targets] = alpha_Q
            T.append((alpha_Q * R_P).sum() - cos_lambda * (v * g_Q).sum())
        return torch.stack(T).mean()

    def update(self, minibatches):
        y = [y for _, y in minibatches]
        z = self.featurizer(torch.cat([x for x, _ in minibatches]))
        nll = F.cross_entropy(self.classifier(z), torch.cat(y))
        loss = nll
        if updates_so_far(self) >= self.hparams["iters"]:
            with torch.autocast(z.device.type, enabled=False):
                z_e = z.to(self.alpha.dtype).split([len(y_e) for y_e in y])
                loss = nll + self.transfer_risk(list(z_e), y)

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        self.head_optimizer.zero_grad(set_to_none=True)  # the backward reached the heads; only fit_heads steps them
        count_update(self)
        loss, nll = loss.detach(), nll.detach()
        return {"loss": loss, "nll": nll, "trm_loss": loss - nll}
