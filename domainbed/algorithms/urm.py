"""URM: Krishnamachari, Ng & Foo, "Uniformly Distributed Feature Representations for Fair and
Robust Learning", TMLR 2024 (Uniform Risk Minimization), as DomainBed's `URM`.

The featurizer's output is squashed into a box, z = s(f(x)) with s = tanh (box [-1, 1]^d) or
sigmoid / relu (box [0, 1]^d, relu's only from below), and an adversarial discriminator D (an
MLP with one logit) pushes the distribution of z towards the uniform distribution on the box,
without domain or group labels. With u ~ U(box), BCE the binary cross-entropy on D's logit and
lambda = `urm_adv_lambda`, each update takes two steps:

    featurizer and head:  min  CE(h(z), y) + lambda * BCE(D(z), 1)
    discriminator:        min  BCE(D(u), 1) + lambda * BCE(D(sg(z)), 0)

(sg: stop-gradient; z is the batch of the first step, before it). With
`urm_discriminator_label_smoothing` s > 0 the discriminator's targets are drawn per sample,
U[1 - s, 1] for u and U[0, s] for z. `predict` is h(s(f(x))).

Departures from DomainBed's code (algorithms.URM):
- Reproduced: lambda also weighs the discriminator's loss on the features (not only the
  featurizer's adversarial term), the discriminator (Linear(d, 100), LeakyReLU, then
  `urm_discriminator_hidden_layers` x (Linear(100, 100), LeakyReLU), Linear(100, 1)) and its own
  optimizer (Adam, or SGD with momentum 0.9, at `urm_discriminator_lr` with the base
  `weight_decay`), and the order of the random draws (u, then the smoothed targets).
- The squashing is a module of this class between featurizer and head (`network` is featurizer,
  squashing, head) instead of an `activation` attribute that DomainBed adds to every backbone;
  the same function. `identity`, which DomainBed accepts but cannot draw noise for (its update
  raises), is no valid `urm_generator_output`.
- The discriminator's optimizer is in `optimizers()` (checkpoints save and restore it); the update
  returns the two losses beside `loss` (DomainBed returns `loss` only).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.hparams.declare import SMALL_IMAGES
from domainbed.hparams.rules import choice, fraction, int_at_least, nonnegative_float, positive_float

# the squashing s of the features and the box [a, b)^d whose uniform distribution they match
SQUASHINGS = {"tanh": (nn.Tanh, -1.0, 1.0), "sigmoid": (nn.Sigmoid, 0.0, 1.0), "relu": (nn.ReLU, 0.0, 1.0)}
DISCRIMINATOR_OPTIMIZERS = ("adam", "sgd")
HIDDEN = 100


def discriminator(n_inputs: int, hidden_layers: int) -> nn.Sequential:
    layers = [nn.Linear(n_inputs, HIDDEN), nn.LeakyReLU()]
    for _ in range(hidden_layers):
        layers += [nn.Linear(HIDDEN, HIDDEN), nn.LeakyReLU()]
    return nn.Sequential(*layers, nn.Linear(HIDDEN, 1))


def uniform(a: float, b: float, n: int, device):
    """n draws from U[a, b), as DomainBed computes them."""
    return (b - a) * torch.rand(n, device=device) + a


@register_algorithm("URM")
class URM(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("urm", "adversarial", lambda r: str(r.choice(["adversarial"])), valid=choice(["adversarial"]),
               help="how the features are made uniform (DomainBed's URM has the adversarial way only)")
        hparam("urm_adv_lambda", 0.1, lambda r: float(r.uniform(0, 0.2)), valid=nonnegative_float(),
               help="weight lambda of the adversarial uniformity terms")
        hparam("urm_discriminator_label_smoothing", 0.0, lambda r: float(r.uniform(0, 0)), valid=fraction(),
               help="s: the discriminator's targets are drawn from U[1-s, 1] (uniform) and U[0, s] (features)")
        hparam("urm_discriminator_optimizer", "adam", lambda r: str(r.choice(["adam"])),
               valid=choice(DISCRIMINATOR_OPTIMIZERS), help="the discriminator's optimizer: adam, or sgd (momentum 0.9)")
        hparam("urm_discriminator_hidden_layers", 1, lambda r: int(r.choice([1, 2, 3])), valid=int_at_least(0),
               help="hidden 100-unit layers of the discriminator after its input layer")
        hparam("urm_generator_output", "tanh", lambda r: str(r.choice(["tanh", "relu"])), valid=choice(SQUASHINGS),
               help="the squashing of the features, whose box's uniform distribution they match: tanh, sigmoid, relu")
        if dataset in SMALL_IMAGES:
            hparam("urm_discriminator_lr", 1e-3, lambda r: float(10 ** r.uniform(-5.5, -3.5)), valid=positive_float(),
                   help="learning rate of the discriminator")
        else:
            hparam("urm_discriminator_lr", 5e-5, lambda r: float(10 ** r.uniform(-6, -4.5)), valid=positive_float(),
                   help="learning rate of the discriminator")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        squashing, self.a, self.b = SQUASHINGS[hparams["urm_generator_output"]]
        self.squashing = squashing()
        self.network = nn.Sequential(self.featurizer, self.squashing, self.classifier)
        self.discriminator = discriminator(self.featurizer.n_outputs, hparams["urm_discriminator_hidden_layers"])
        params, lr, weight_decay = self.discriminator.parameters(), hparams["urm_discriminator_lr"], hparams["weight_decay"]
        if hparams["urm_discriminator_optimizer"] == "sgd":
            self.disc_optimizer = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
        else:
            self.disc_optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    def optimizers(self):
        return {"optimizer": self.optimizer, "disc_optimizer": self.disc_optimizer}

    def discriminator_loss(self, z, target):
        """BCE of D's logit on `z` against `target` (one value per sample)."""
        logit = self.discriminator(z).squeeze(1)
        return F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype))

    def targets(self, n: int, device):
        """(targets of u, targets of z): ones and zeros, or with label smoothing s per-sample
        draws from U[1 - s, 1] and U[0, s]."""
        s = self.hparams["urm_discriminator_label_smoothing"]
        if not s:
            return torch.ones(n, device=device), torch.zeros(n, device=device)
        return uniform(1 - s, 1.0, n, device), uniform(0.0, s, n, device)

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        lam = self.hparams["urm_adv_lambda"]

        z = self.squashing(self.featurizer(x))
        ce = F.cross_entropy(self.classifier(z), y)
        adversarial = self.discriminator_loss(z, torch.ones(len(z), device=z.device))
        loss = ce + lam * adversarial
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)

        z = z.detach()
        u = (self.b - self.a) * torch.rand_like(z) + self.a
        target_u, target_z = self.targets(len(z), z.device)
        disc_loss = self.discriminator_loss(u, target_u) + lam * self.discriminator_loss(z, target_z)
        self.disc_optimizer.zero_grad(set_to_none=True)
        self.backward(disc_loss)
        self.optimizer_step(self.disc_optimizer)
        return {"loss": loss.detach(), "ce": ce.detach(), "adversarial": adversarial.detach(),
                "disc_loss": disc_loss.detach()}
