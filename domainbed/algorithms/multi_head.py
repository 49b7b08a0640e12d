"""MultiHead: one classifier head per source domain on a shared featurizer.

The multi-head baseline of Chattopadhyay, Balaji, Hoffman, "Learning to Balance Specificity and
Invariance for In and Out of Domain Generalization", ECCV 2020 (official code: prithv1/DMG,
`models/multihead_model.py`, `trainers/multihead_trainer.py`). Its other baseline, aggregate
training, is ERM.

Training routes every sample to its own domain's head: the loss is the mean cross-entropy over
the whole batch of head_{d(i)}(f(x_i)). A training domain i is predicted by head i
(`predict(x, env=i)`, the official `route` evaluation); an unseen domain by the average of the
heads' logits (the official `avg_forward`). `classifier` is that average, so `network(x)` is the
unseen-domain prediction as for every other method.

Where we differ from the official code, and why:
- Heads are initialised as the official `PARAM_INIT: custom` does (weights ~ N(0, 0.001),
  biases 0) on every backbone; the head is the last linear layer (the official `SPLIT_LAYER`
  `fc` / `classifier.6`), or DomainBed's MLP head with `nonlinear_classifier`.
- The official AlexNet variant builds its heads from the same module objects, so all domains
  share one head there (a bug); here every domain has its own head on every backbone.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import register_algorithm
from domainbed.errors import UsageError


class MultiHeadClassifier(nn.Module):
    """`heads[d]` for domain d; `forward(f)` averages the heads' logits, `forward(f, env=d)` is head d."""

    def __init__(self, in_features: int, num_classes: int, num_domains: int, nonlinear: bool):
        super().__init__()
        self.heads = nn.ModuleList(networks.Classifier(in_features, num_classes, nonlinear) for _ in range(num_domains))
        for module in self.heads.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.001)
                nn.init.zeros_(module.bias)

    def forward(self, features, env=None):
        if env is not None:
            return self.heads[env](features)
        return torch.stack([head(features) for head in self.heads]).mean(0)


@register_algorithm("MultiHead")
class MultiHead(Algorithm):
    DATA_PARALLEL = True  # a mean over samples, each through its domain's head

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = MultiHeadClassifier(self.featurizer.n_outputs, num_classes, num_domains,
                                              hparams["nonlinear_classifier"])
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = self.new_optimizer(self.network.parameters())

    def update(self, minibatches):
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        features = self.featurizer(all_x).split([len(y) for _, y in minibatches])
        logits = torch.cat([self.classifier(f, env=d) for d, f in enumerate(features)])
        loss = F.cross_entropy(logits, all_y)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}

    def predict(self, x, env=None):
        if env is not None and not 0 <= env < self.num_domains:
            raise UsageError(f"env {env} is not a training domain; valid: 0 to {self.num_domains - 1}")
        return self.classifier(self.featurizer(x), env)
