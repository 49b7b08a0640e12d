"""MTL: marginal transfer learning (Blanchard, Deshmukh, Dogan, Lee, Scott, "Domain
Generalization by Marginal Transfer Learning", JMLR 2021), as DomainBed's MTL.

The head sees the features z = f(x) concatenated with an embedding mu of the domain's marginal
distribution, the mean feature: h([z, mu]). For a training domain e, mu_e is an exponential
moving average kept in a buffer, mu_e <- ema * mean(z) + (1 - ema) * mu_e (DomainBed's
spelling: `mtl_ema` weighs the new batch mean); for an unseen domain mu is the batch's mean
feature. The loss is the sum over domains of CE(h([z, mu_e]), y). Hparam `mtl_ema` (0.99).

Departures from DomainBed's code (algorithms.MTL):
- DomainBed's `predict` ends with `.normal_()` on the embedding, which replaces mu by Gaussian
  noise, so its published MTL numbers are those of a head fed noise. We use mu as the paper does:
  reproducing it would make `predict` random in eval mode, which the algorithm contract
  (domainbed/algorithms/base.py) forbids. Set `mtl_noise_quirk` True to train with DomainBed's
  noise (training only; eval still uses mu).
- The moving averages change only in training mode, so evaluating a training domain
  (`predict(x, env=e)` in eval) reads mu_e without moving it; DomainBed never evaluates with env.
"""

import torch
import torch.nn.functional as F

from domainbed import distributed, networks
from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("MTL")
class MTL(Algorithm):
    DATA_PARALLEL = True  # the domain embeddings are the whole batch's means (global_mean)

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("mtl_ema", 0.99, lambda r: float(r.choice([0.5, 0.9, 0.99, 1.0])), help="moving-average factor of the domain embeddings")
        hparam("mtl_noise_quirk", False,
               help="feed the head Gaussian noise instead of the domain embedding in training, as DomainBed's predict does")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = networks.Classifier(2 * self.featurizer.n_outputs, num_classes,
                                              hparams["nonlinear_classifier"])
        self.optimizer = self.new_optimizer([*self.featurizer.parameters(), *self.classifier.parameters()])
        self.register_buffer("embeddings", torch.zeros(num_domains, self.featurizer.n_outputs))
        self.ema = hparams["mtl_ema"]

    def domain_embedding(self, z, env):
        """mu for a batch of features z of domain `env` (None: unseen), moving mu_env in training."""
        mu = z.mean(0)
        if env is not None:
            if self.training:
                mu = distributed.global_mean(mu)  # the whole batch's under data parallelism
                mu = self.ema * mu + (1 - self.ema) * self.embeddings[env]
                self.embeddings[env] = mu.detach().to(self.embeddings.dtype)
            else:
                mu = self.embeddings[env].to(z.dtype)
        if self.training and self.hparams["mtl_noise_quirk"]:
            mu = torch.randn_like(mu)
        return mu.expand(len(z), -1)

    def update(self, minibatches):
        loss = sum(F.cross_entropy(self.predict(x, env), y) for env, (x, y) in enumerate(minibatches))
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}

    def predict(self, x, env=None):
        z = self.featurizer(x)
        return self.classifier(torch.cat([z, self.domain_embedding(z, env)], 1))
