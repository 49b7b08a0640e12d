"""SagNet: style-agnostic networks (Nam, Lee, Park, Yoon, Yoo, "Reducing Domain Gap by Reducing
Style Bias", CVPR 2021), as DomainBed and SWAD run it: on the featurizer's output z.

Two heads on one featurizer f. The content head h_c sees z with its style (mean and variance
over the feature dimension, per sample) interpolated towards a random other sample's,
mu' = a mu + (1 - a) mu_pi with a ~ U(0, 1) (likewise the variance); the style head h_s sees a
random other sample's normalised content with this sample's style. One update:

    1. content: f, h_c minimise CE(h_c(style-randomised z), y)
    2. style:   h_s minimises CE(h_s(content-randomised z), y)
    3. adversary: f minimises -w_adv * mean over classes of log softmax(h_s(content-randomised z))
       (pushes the style head towards a uniform prediction)

Prediction: h_c(f(x)). Hparam `sag_w_adv` (0.1), DomainBed's.

Departures from DomainBed's code (algorithms.SagNet): three optimizers in `optimizers()`
(checkpoints save all three); the featurizer's optimizer steps twice per update, which under
fp16 updates the loss scale in between (domainbed/training/precision.py). Maps (B, C, H, W) are
randomised over H*W per channel, as DomainBed's `randomize` for 4-d inputs, though our
featurizers, like DomainBed's, give flat features.
"""

import torch
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import register_algorithm

EPS = 1e-5


def randomize(z, what: str):
    """z with its per-sample style ('style') or its content ('content') taken from a random
    permutation of the batch; DomainBed's `randomize` (statistics over the last dimension)."""
    sizes = z.shape
    a = torch.rand(sizes[0], 1, device=z.device)
    if z.dim() == 4:
        z = z.view(sizes[0], sizes[1], -1)
        a = a.unsqueeze(-1)
    mean, var = z.mean(-1, keepdim=True), z.var(-1, keepdim=True)
    z = (z - mean) / (var + EPS).sqrt()
    pi = torch.randperm(sizes[0], device=z.device)
    if what == "style":
        mean = a * mean + (1 - a) * mean[pi]
        var = a * var + (1 - a) * var[pi]
    else:
        z = z[pi].detach()
    return (z * (var + EPS).sqrt() + mean).view(*sizes)


@register_algorithm("SagNet")
class SagNet(Algorithm):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("sag_w_adv", 0.1, lambda r: float(10 ** r.uniform(-2, 1)), help="weight of the adversarial style loss")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        nonlinear = hparams["nonlinear_classifier"]
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = networks.Classifier(self.featurizer.n_outputs, num_classes, nonlinear)
        self.style_classifier = networks.Classifier(self.featurizer.n_outputs, num_classes, nonlinear)
        self.network = torch.nn.Sequential(self.featurizer, self.classifier)
        self.optimizer_f = self.new_optimizer(self.featurizer.parameters())
        self.optimizer_c = self.new_optimizer(self.classifier.parameters())
        self.optimizer_s = self.new_optimizer(self.style_classifier.parameters())

    def optimizers(self):
        return {"optimizer_f": self.optimizer_f, "optimizer_c": self.optimizer_c, "optimizer_s": self.optimizer_s}

    def forward_c(self, x):
        return self.classifier(randomize(self.featurizer(x), "style"))

    def forward_s(self, x):
        return self.style_classifier(randomize(self.featurizer(x), "content"))

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])

        self.optimizer_f.zero_grad(set_to_none=True)
        self.optimizer_c.zero_grad(set_to_none=True)
        loss_c = F.cross_entropy(self.forward_c(x), y)
        self.backward(loss_c)
        self.optimizer_step(self.optimizer_f)
        self.optimizer_step(self.optimizer_c)

        self.optimizer_s.zero_grad(set_to_none=True)
        loss_s = F.cross_entropy(self.forward_s(x), y)
        self.backward(loss_s)
        self.optimizer_step(self.optimizer_s)

        self.optimizer_f.zero_grad(set_to_none=True)
        loss_adv = -self.hparams["sag_w_adv"] * F.log_softmax(self.forward_s(x), dim=1).mean(1).mean()
        self.backward(loss_adv)
        self.optimizer_step(self.optimizer_f)
        self.optimizer_s.zero_grad(set_to_none=True)  # the adversary's pass reached h_s too

        return {"loss": loss_c.detach(), "loss_s": loss_s.detach(), "loss_adv": loss_adv.detach()}

    def predict(self, x, env=None):
        return self.classifier(self.featurizer(x))
