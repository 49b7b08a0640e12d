"""Fish: Shi, Seely, Torr, Siddharth, Hannun, Usunier & Synnaeve, "Gradient Matching for Domain
Generalization", ICLR 2022, Algorithm 2 (the first-order Fish), as DomainBed's `Fish`.

Each update: clone the network, theta_tilde <- theta; take one inner step per training domain,
in order, with the inner optimizer on that domain's cross-entropy,

    theta_tilde <- InnerOpt(theta_tilde, grad CE_e(theta_tilde)),   e = 1..m

then move the network towards the clone, theta <- theta + meta_lr (theta_tilde - theta).

The meta move is taken as one plain SGD step (lr `meta_lr`, no momentum, no weight decay) on
the meta-gradient theta - theta_tilde, which is the same update, so that every parameter of the
network belongs to an optimizer (`meta_optimizer`) and the clone's to the other
(`inner_optimizer`, the base optimizer of the hparams); `optimizers()` returns both. Buffers
(BatchNorm statistics) move by the same interpolation, as DomainBed interpolates the whole
state dict; integer buffers (BatchNorm's batch counter) take the clone's value.

As in DomainBed the inner optimizer's state (Adam's moments) carries over from one update to the
next, and the reported loss is that of the last inner step (the last domain).

Differences from DomainBed's code: the clone is a submodule built once (`network_inner`), its
weights reloaded from the network at every update, instead of a new network and a new Adam
loaded with the saved state each step: the same computation, without rebuilding. Under
`--precision fp16` each inner step goes through the loss scaler (which updates its scale between
two steps of one optimizer); the meta step is a plain `step()`, since its gradient is a weight
difference, not a scaled loss gradient.
"""

import copy

import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


@register_algorithm("Fish")
class Fish(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("meta_lr", 0.5, lambda r: float(r.choice([0.05, 0.1, 0.5])),
               help="step size of the meta update towards the inner loop's weights")
    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.network_inner = copy.deepcopy(self.network)
        self.inner_optimizer = self.new_optimizer(self.network_inner.parameters())
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=hparams["meta_lr"])

    def optimizers(self):
        return {"meta_optimizer": self.optimizer, "inner_optimizer": self.inner_optimizer}

    def update(self, minibatches):
        self.network_inner.load_state_dict(self.network.state_dict())
        for x, y in minibatches:
            loss = F.cross_entropy(self.network_inner(x), y)
            self.inner_optimizer.zero_grad(set_to_none=True)
            self.backward(loss)
            self.optimizer_step(self.inner_optimizer)

        meta_lr = self.hparams["meta_lr"]
        with torch.no_grad():
            for theta, theta_tilde in zip(self.network.parameters(), self.network_inner.parameters()):
                theta.grad = theta - theta_tilde
            for b, b_tilde in zip(self.network.buffers(), self.network_inner.buffers()):
                if b.is_floating_point():
                    b.add_(b_tilde - b, alpha=meta_lr)
                else:
                    b.copy_(b_tilde)
        self.optimizer.step()  # never unscaled: theta - theta_tilde carries no loss scale
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item()}
