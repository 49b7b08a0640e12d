"""Empirical risk minimisation: the cross-entropy on all training domains pooled together."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("ERM")
class ERM(Algorithm):
    """ERM (Vapnik, 1998) as DomainBed and SWAD run it: one featurizer and one linear head,
    one base-optimizer step on the mean cross-entropy over the concatenated minibatches."""

    DATA_PARALLEL = True  # a mean over samples: the averaged gradients are the whole batch's

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = networks.Classifier(
            self.featurizer.n_outputs, num_classes, hparams["nonlinear_classifier"]
        )
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = self.new_optimizer(self.network.parameters())

    def empirical_risk(self, minibatches):
        """The mean cross-entropy over the concatenated minibatches."""
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        return F.cross_entropy(self.predict(all_x), all_y)

    def update(self, minibatches):
        loss = self.empirical_risk(minibatches)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}

    def predict(self, x, env=None):
        return self.network(x)
