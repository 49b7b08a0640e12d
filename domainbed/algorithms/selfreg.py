"""SelfReg: Kim, Yoo, Park, Kim & Lee, "SelfReg: Self-supervised Contrastive Regularization for
Domain Generalization", ICCV 2021, as DomainBed's `SelfReg`.

Every sample of the pooled minibatch is paired with two random samples of its own class
(permutations pi_1, pi_2 within each class) and with their mixup, lam ~ Beta(0.5, 0.5):

    z = featurizer(x), p = proj(z), o = classifier(z)
    o' = o[pi_1], o'' = lam o[pi_1] + (1 - lam) o[pi_2]      (likewise p', p'' from p)
    L_ind = MSE(o, o') + 0.3 MSE(z, p'),   L_hdl = MSE(o, o'') + 0.3 MSE(z, p'')
    loss  = CE(o, y) + min(CE(o, y), 1) * (lam L_ind + (1 - lam) L_hdl)

with `proj` the class-different projection layer (three linear layers with BatchNorm; hidden
width that of the features when it is 2048, twice it otherwise). The scale min(CE, 1) is a
constant of the step (not differentiated), as in DomainBed where it is a python float.

DomainBed quirks reproduced (both change the published numbers), named:
- the feature terms compare the featurizer's output z with the *projected* features of the
  partners (MSE(z, p')), as DomainBed and the official code write it;
- `proj` is built after ERM's optimizer, so DomainBed never trains it (only its BatchNorm running
  statistics move). Here its parameters are frozen (`requires_grad=False`): the same training,
  and no trainable parameter sits outside every optimizer (a quantization step size added to a
  projection layer is frozen likewise).

Differences from DomainBed's code: the within-class permutations are drawn by sorting random
keys inside each class (one vectorised draw, no python loop over samples) and lam comes from
torch's generator: the same distributions, other draws; the scale min(CE, 1) is kept as a
tensor (no host synchronisation).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


def projection(width: int) -> nn.Module:
    hidden = width if width == 2048 else 2 * width
    return nn.Sequential(
        nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, width), nn.BatchNorm1d(width),
    )


def within_class_permutation(y):
    """Indices pi with y[pi] == y and pi uniformly random inside each class, for y sorted."""
    keys = y.float() + torch.rand(len(y), device=y.device)
    return torch.argsort(keys)


@register_algorithm("SelfReg")
class SelfReg(ERM):
    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.cdpl = projection(self.featurizer.n_outputs).requires_grad_(False)

    def add_parameters_to_optimizers(self, params_beside):
        """A parameter added beside one of the frozen projection's (a quantization step size)
        is frozen with it; the others join the optimizer as in the base class."""
        frozen = {id(p) for p in self.cdpl.parameters()}
        for new, existing in params_beside:
            if id(existing) in frozen:
                new.requires_grad_(False)
        return super().add_parameters_to_optimizers([(n, e) for n, e in params_beside if id(e) not in frozen])

    def update(self, minibatches):
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        all_y, order = torch.sort(all_y, stable=True)
        all_x = all_x[order]
        lam = float(torch.distributions.Beta(0.5, 0.5).sample())
        pi_1, pi_2 = within_class_permutation(all_y), within_class_permutation(all_y)

        z = self.featurizer(all_x)
        p = self.cdpl(z)
        o = self.classifier(z)
        o_ind, p_ind = o[pi_1], p[pi_1]
        o_hdl, p_hdl = lam * o_ind + (1 - lam) * o[pi_2], lam * p_ind + (1 - lam) * p[pi_2]
        L_ind = F.mse_loss(o, o_ind) + 0.3 * F.mse_loss(z, p_ind)
        L_hdl = F.mse_loss(o, o_hdl) + 0.3 * F.mse_loss(z, p_hdl)
        cl_loss = F.cross_entropy(o, all_y)
        scale = cl_loss.detach().clamp_max(1.0)
        loss = cl_loss + scale * (lam * L_ind + (1 - lam) * L_hdl)

        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}
