"""Transfer: Zhang, Zhao, Yu & Poupart, "Quantifying and Improving Transferability in Domain
Generalization", NeurIPS 2021, Algorithm 1, as DomainBed's `Transfer`.

With featurizer g, head h and R_e(h o g) the cross-entropy of training domain e, the gap of a
head is gap(h') = max_e R_e(h' o g) - min_e R_e(h' o g). Transferability among the training
domains is measured by the worst gap over heads h' in the ball B(h, delta) (Euclidean in the
head's parameters). Algorithm 1 alternates descent on (g, h) with projected ascent on h':

    descent:  (g, h) <- step on mean CE(h(g(x)), y)              (the pooled minibatch)
              g      <- step on t_lambda * gap(h')
    ascent:   h' <- h, then `d_steps_per_g` times
              h' <- Proj_{B(h, delta)}(h' + lr_d * grad_{h'} t_lambda * gap(h'))

where Proj_{B(h, delta)}(h') = h + min(1, delta / ||h' - h||) (h' - h). The ascent of one
update gives the h' that the next update's descent penalises (at the first update h' = h).

Departures from DomainBed's code (algorithms.Transfer, the authors' code):
- Reproduced: the two descent steps are two steps of one optimizer (the base optimizer: Adam
  with `weight_decay` by default, DomainBed's), the second one moving only g (h gets no gradient
  from gap(h')); the ascent is plain SGD at `lr_d`; the reported `gap` is t_lambda * gap(h')
  before the last ascent step, as DomainBed reports it.
- `gda` (drawn True by every DomainBed random search): DomainBed's optimizer is then SGD over the
  adversarial head h' instead of (g, h), so g and h never train and the predictions are those of
  the initial network (a bug; with the default False the published runs are unaffected). Here it
  means what it names: plain SGD at `lr` (gradient descent-ascent) over g and h. Reproducing the
  bug would put h' in two optimizers and g, h in none, which the algorithm contract forbids.
- The ascent's forward passes of g run without a graph: DomainBed back-propagates them into g
  and then discards those gradients (zeroed before g's next step), so this is the same update.
  g still runs once per ascent step, as DomainBed's, so BatchNorm statistics and dropout draws
  are those of DomainBed.
- The ball's radius is measured over h's parameters (DomainBed: over its state dict, which for
  a linear or MLP head holds the same tensors).
- `weight_decay_d` and `beta1` are declared (DomainBed's random search draws them) but, as in
  DomainBed, nothing reads them. DomainBed's `update_second` (a variant the authors' script
  meant for OfficeHome) is no part of DomainBed's training and is left out.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import register_algorithm
from domainbed.hparams.rules import fraction, int_at_least, nonnegative_float, positive_float


def distance(h_adv: nn.Module, h: nn.Module):
    """||h' - h||: the Euclidean norm of the difference of all their parameters."""
    return torch.sqrt(sum((p_adv - p).pow(2).sum() for p_adv, p in zip(h_adv.parameters(), h.parameters())))


@torch.no_grad()
def project(h_adv: nn.Module, h: nn.Module, delta: float) -> None:
    """h' <- Proj_{B(h, delta)}(h'), in place."""
    dist = distance(h_adv, h)
    if dist > delta:
        for p_adv, p in zip(h_adv.parameters(), h.parameters()):
            p_adv.copy_(p + (delta / dist) * (p_adv - p))


@register_algorithm("Transfer")
class Transfer(Algorithm):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("t_lambda", 1.0, lambda r: float(10 ** r.uniform(-2, 1)), valid=nonnegative_float(),
               help="weight t_lambda of the worst-case loss gap between training domains")
        hparam("delta", 2.0, lambda r: float(r.uniform(0.1, 3.0)), valid=nonnegative_float(),
               help="radius of the ball around the head in which the adversarial head searches")
        hparam("d_steps_per_g", 10, lambda r: int(r.choice([1, 2, 5])), valid=int_at_least(1),
               help="projected ascent steps of the adversarial head per update")
        hparam("weight_decay_d", 0.0, lambda r: float(10 ** r.uniform(-6, -2)), valid=nonnegative_float(),
               help="declared as DomainBed's Transfer declares it; nothing reads it there or here")
        hparam("gda", False, lambda r: True,
               help="plain SGD at lr for featurizer and head (gradient descent-ascent) instead of the base optimizer")
        hparam("beta1", 0.5, lambda r: float(r.choice([0.0, 0.5])), valid=fraction(),
               help="declared as DomainBed's Transfer declares it; nothing reads it there or here")
        hparam("lr_d", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)), valid=positive_float(),
               help="learning rate of the adversarial head's ascent (SGD)")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = networks.Classifier(self.featurizer.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.adv_classifier = networks.Classifier(self.featurizer.n_outputs, num_classes,
                                                  hparams["nonlinear_classifier"])
        self.adv_classifier.load_state_dict(self.classifier.state_dict())
        self.network = nn.Sequential(self.featurizer, self.classifier)
        if hparams["gda"]:
            self.optimizer = torch.optim.SGD(self.network.parameters(), lr=hparams["lr"])
        else:
            self.optimizer = self.new_optimizer(self.network.parameters())
        self.adv_optimizer = torch.optim.SGD(self.adv_classifier.parameters(), lr=hparams["lr_d"])

    def optimizers(self):
        return {"optimizer": self.optimizer, "adv_optimizer": self.adv_optimizer}

    def loss_gap(self, minibatches, head, features=None):
        """max_e R_e(head o g) - min_e R_e(head o g); `features` (one tensor per domain) when g's
        output is given."""
        if features is None:
            features = [self.featurizer(x) for x, _ in minibatches]
        R = torch.stack([F.cross_entropy(head(z), y) for z, (_, y) in zip(features, minibatches)])
        return R.max() - R.min()

    def update(self, minibatches):
        t_lambda = self.hparams["t_lambda"]
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.predict(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)

        penalty = t_lambda * self.loss_gap(minibatches, self.adv_classifier)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(penalty)
        self.optimizer_step(self.optimizer)

        self.adv_classifier.load_state_dict(self.classifier.state_dict())
        for _ in range(self.hparams["d_steps_per_g"]):
            with torch.no_grad():
                features = [self.featurizer(x) for x, _ in minibatches]
            gap = t_lambda * self.loss_gap(minibatches, self.adv_classifier, features)
            self.adv_optimizer.zero_grad(set_to_none=True)
            self.backward(-gap)
            self.optimizer_step(self.adv_optimizer)
            project(self.adv_classifier, self.classifier, self.hparams["delta"])
        return {"loss": loss.detach(), "gap": gap.detach()}

    def predict(self, x, env=None):
        return self.network(x)
