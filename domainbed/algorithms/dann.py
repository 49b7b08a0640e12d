"""DANN and CDANN: domain-adversarial training.

DANN: Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016. CDANN: Li et
al., "Deep Domain Generalization via Conditional Invariant Adversarial Networks", ECCV 2018.
A discriminator D predicts the domain d from the features z = f(x) (CDANN: from z + E[y], a
learned class embedding, with each sample weighted by 1 / (n_classes * count of its class) in
the batch). The steps alternate as DomainBed's: of every `d_steps_per_g_step` + 1 updates,
`d_steps_per_g_step` minimise the discriminator loss

    L_D = CE(D(z), d) + grad_penalty * mean_i ||grad_{z_i} sum CE(D(z), d)||^2

over D (and E), and one minimises CE(h(z), y) - lambda * L_D over f and the head h.

Departures from DomainBed's code (algorithms.AbstractDANN):
- Reproduced: the alternation by an update counter (a buffer, so resumption keeps the phase;
  with the default 1, odd-numbered updates, the first included, are generator steps), the two
  Adam optimizers with betas (beta1, 0.9), lr_d / lr_g and weight_decay_d / weight_decay_g, and
  the generator's loss including the gradient penalty term of L_D, as DomainBed's does.
- Both optimizers are in `optimizers()` (checkpoints save and restore both).
- Returned stats always include `loss`: the discriminator loss on a discriminator step, the
  generator loss on a generator step (DomainBed returns `disc_loss` or `gen_loss`, also given).
- Devices follow the inputs (DomainBed hard-codes none here, but builds labels with `.cuda()`
  in older versions).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import register_algorithm
from domainbed.algorithms.update_count import count_update, register_update_count, updates_so_far
from domainbed.hparams.declare import SMALL_IMAGES


def discriminator_turn(update_count: int, d_steps_per_g_step: int) -> bool:
    """Whether update number `update_count` (counted from 1) is a discriminator step in DomainBed's
    alternation: the generator gets the updates with update_count = k mod (k + 1), k =
    `d_steps_per_g_step` (k = 1: the odd ones; k = 2: updates 2, 5, 8, ...)."""
    return update_count % (1 + d_steps_per_g_step) < d_steps_per_g_step


class AbstractDANN(Algorithm):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("lambda", 1.0, lambda r: float(10 ** r.uniform(-2, 2)),
               help="weight of the adversarial domain loss in the generator's objective (CDANN: class-conditional)")
        hparam("weight_decay_d", 0.0, lambda r: float(10 ** r.uniform(-6, -2)), help="weight decay of the discriminator")
        hparam("d_steps_per_g_step", 1, lambda r: int(2 ** r.uniform(0, 3)), help="discriminator steps per generator step")
        hparam("grad_penalty", 0.0, lambda r: float(10 ** r.uniform(-2, 1)), help="weight of the discriminator's gradient penalty")
        hparam("beta1", 0.5, lambda r: float(r.choice([0.0, 0.5])), help="Adam's beta1 of both optimizers")
        if dataset in SMALL_IMAGES:
            hparam("lr_g", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)), help="learning rate of the featurizer and classifier")
            hparam("lr_d", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)), help="learning rate of the domain discriminator")
            hparam("weight_decay_g", 0.0, lambda r: 0.0, help="weight decay of the featurizer and classifier")
        else:
            hparam("lr_g", 5e-5, lambda r: float(10 ** r.uniform(-5, -3.5)), help="learning rate of the featurizer and classifier")
            hparam("lr_d", 5e-5, lambda r: float(10 ** r.uniform(-5, -3.5)), help="learning rate of the domain discriminator")
            hparam("weight_decay_g", 0.0, lambda r: float(10 ** r.uniform(-6, -2)),
                   help="weight decay of the featurizer and classifier")
    conditional = False
    class_balance = False

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        register_update_count(self)
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = networks.Classifier(self.featurizer.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.discriminator = networks.MLP(self.featurizer.n_outputs, num_domains, hparams)
        self.class_embeddings = nn.Embedding(num_classes, self.featurizer.n_outputs)
        betas = (hparams["beta1"], 0.9)
        self.disc_optimizer = torch.optim.Adam(
            [*self.discriminator.parameters(), *self.class_embeddings.parameters()],
            lr=hparams["lr_d"], weight_decay=hparams["weight_decay_d"], betas=betas)
        self.gen_optimizer = torch.optim.Adam(
            [*self.featurizer.parameters(), *self.classifier.parameters()],
            lr=hparams["lr_g"], weight_decay=hparams["weight_decay_g"], betas=betas)

    def optimizers(self):
        return {"disc_optimizer": self.disc_optimizer, "gen_optimizer": self.gen_optimizer}

    def discriminator_loss(self, z, y, d):
        disc_input = z + self.class_embeddings(y) if self.conditional else z
        disc_out = self.discriminator(disc_input)
        if self.class_balance:
            counts = F.one_hot(y, self.num_classes).sum(0)
            weights = 1.0 / (counts[y] * counts.shape[0]).float()
            loss = (weights * F.cross_entropy(disc_out, d, reduction="none")).sum()
        else:
            loss = F.cross_entropy(disc_out, d)
        (input_grad,) = torch.autograd.grad(F.cross_entropy(disc_out, d, reduction="sum"), [disc_input],
                                            create_graph=True)
        penalty = (input_grad ** 2).sum(dim=1).mean(dim=0)
        return loss + self.hparams["grad_penalty"] * penalty

    def update(self, minibatches):
        count_update(self)
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        d = torch.cat([torch.full_like(y, i) for i, (_, y) in enumerate(minibatches)])
        z = self.featurizer(x)
        disc_loss = self.discriminator_loss(z, y, d)
        self.disc_optimizer.zero_grad(set_to_none=True)
        self.gen_optimizer.zero_grad(set_to_none=True)
        if discriminator_turn(updates_so_far(self), self.hparams["d_steps_per_g_step"]):
            self.backward(disc_loss)
            self.optimizer_step(self.disc_optimizer)
            return {"loss": disc_loss.detach(), "disc_loss": disc_loss.detach()}
        gen_loss = F.cross_entropy(self.classifier(z), y) - self.hparams["lambda"] * disc_loss
        self.backward(gen_loss)
        self.optimizer_step(self.gen_optimizer)
        self.disc_optimizer.zero_grad(set_to_none=True)
        return {"loss": gen_loss.detach(), "gen_loss": gen_loss.detach()}

    def predict(self, x, env=None):
        return self.network(x)


@register_algorithm("DANN")
class DANN(AbstractDANN):
    """Unconditional: D sees z; every sample weighs the same."""

    DATA_PARALLEL = True  # means over samples: D's cross-entropy, the penalty on per-sample input gradients


@register_algorithm("CDANN")
class CDANN(AbstractDANN):
    """Conditional: D sees z + E[y]; samples weighted to balance the classes."""

    conditional = True
    class_balance = True
