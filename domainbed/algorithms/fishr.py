"""Fishr: Rame, Dancette & Cord, "Fishr: Invariant Gradient Variances for Out-of-Distribution
Generalization", ICML 2022, as DomainBed's `Fishr`.

With g_i = grad_w CE(classifier(z_i), y_i) the per-sample gradient of the classifier's
parameters w (all of them, flattened), domain e's gradient variance is
v_e = mean_{i in e} (g_i - mean_{i in e} g_i)^2 (biased, elementwise). Each v_e goes through an
exponential moving average (DomainBed's `MovingAverage` with its 1/(1 - ema) correction):

    a_e <- ema * a_e + (1 - ema) * v_e,   v~_e = a_e / (1 - ema)   (a_e starts at 0, and the
                                                                    stored a_e is detached)
    penalty = mean_e mean_k (v~_e - mean_e' v~_e')_k^2
    loss    = CE(all) + lambda * penalty   (lambda = 0 for the first `penalty_anneal_iters` steps)

and at step `penalty_anneal_iters` (when not 0) the optimizer is reset, as IRM / VREx. The
penalty is differentiated through the per-sample gradients (double back-propagation into the
classifier and the features).

DomainBed quirk reproduced (it sets the penalty's scale): the "correction" divides the raw
average by (1 - ema) at every step, not only at the first, so after the first steps v~_e is about
v_e / (1 - ema) (20 v_e at ema 0.95), not v_e.

Differences from DomainBed's code: DomainBed takes the per-sample gradients with BackPACK
(`BatchGrad` on the extended classifier); here they come from `torch.func` (`vmap` over `grad` of
the classifier called functionally), no extra dependency, the same values (the test checks them
against a loop over samples). The averages a_e are one buffer (domains x parameters) so they
travel in the state dict and resumption is exact, and the anneal reads `self.step` (set by the
trainer's `on_step_begin`) instead of counting calls. The optimizer is reset in place (its state
cleared) rather than replaced, so parameters added to it later (quantization) stay in it; it is
the base optimizer of the hparams (Adam by default, as DomainBed's).
"""

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


def per_sample_gradients(module, z, y, names=None):
    """(n x P): row i is the flattened gradient of CE(module(z_i), y_i) in `module`'s parameters
    (those of `names`, all when None)."""
    params = {name: p for name, p in module.named_parameters() if names is None or name in names}

    def loss(params, z_i, y_i):
        return F.cross_entropy(functional_call(module, params, (z_i.unsqueeze(0),)), y_i.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, z, y)
    return torch.cat([g.reshape(len(z), -1) for g in grads.values()], dim=1)


def gradient_variances(grads, sizes):
    """(m x P): the biased elementwise variance of the rows of each domain's block."""
    return torch.stack([g.var(0, unbiased=False) for g in torch.split(grads, sizes)])


@register_algorithm("Fishr")
class Fishr(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("lambda", 1000.0, lambda r: float(10 ** r.uniform(1.0, 4.0)),
               help="weight of the distance between the domains' gradient variances")
        hparam("penalty_anneal_iters", 1500, lambda r: int(r.uniform(0.0, 5000.0)),
               help="steps before the penalty weight switches from 1 to its full value")
        hparam("ema", 0.95, lambda r: float(r.uniform(0.90, 0.99)), help="moving-average factor of the per-domain gradient variances")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        # the parameters of the penalty, fixed here: a quantization swap adds step sizes to the
        # classifier, which stay out of it (and the averages keep their shape)
        self.penalised = tuple(name for name, _ in self.classifier.named_parameters())
        n_params = sum(p.numel() for p in self.classifier.parameters())
        self.register_buffer("variance_ema", torch.zeros(num_domains, n_params))

    def penalty(self, z, y, sizes):
        v = gradient_variances(per_sample_gradients(self.classifier, z, y, self.penalised), sizes)
        ema = self.hparams["ema"]
        a = ema * self.variance_ema + (1 - ema) * v
        self.variance_ema.copy_(a.detach())
        v_tilde = a / (1 - ema)
        return (v_tilde - v_tilde.mean(0, keepdim=True)).pow(2).mean()

    def update(self, minibatches):
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        z = self.featurizer(all_x)
        nll = F.cross_entropy(self.classifier(z), all_y)
        penalty = self.penalty(z, all_y, [len(x) for x, _ in minibatches])

        anneal = self.hparams["penalty_anneal_iters"]
        weight = self.hparams["lambda"] if self.step >= anneal else 0.0
        if self.step == anneal != 0:
            self.optimizer.state.clear()
        objective = nll + weight * penalty

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(objective)
        self.optimizer_step(self.optimizer)
        return {"loss": objective.detach(), "nll": nll.detach(), "penalty": penalty.detach().to(nll.dtype)}
