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

Differences from DomainBed's code: the clone is not a module. Its weights theta_tilde are tensors
that only the inner optimizer holds, reloaded from the network at every update, and the inner
steps run the network itself on them (`torch.func.functional_call`), where DomainBed builds a new
network and a new Adam loaded with the saved state each step: the same computation, without
rebuilding, and `state_dict()`, `parameters()`, saved models and weight averages hold the network
alone (DomainBed's clone is a submodule after the first update, which doubles all of them). The
inner weights are re-created from the network's, each keeping its optimizer state by name, when
the network's parameters change in name, device or dtype: quantization's swap adds step sizes,
and a resumed run is moved to its device after construction. Under
`--precision fp16` each inner step goes through the loss scaler (which updates its scale between
two steps of one optimizer); the meta step is a plain `step()`, since its gradient is a weight
difference, not a scaled loss gradient.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm


def _detached_copy(parameter):
    return nn.Parameter(parameter.detach().clone(), requires_grad=parameter.requires_grad)


@register_algorithm("Fish")
class Fish(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("meta_lr", 0.5, lambda r: float(r.choice([0.05, 0.1, 0.5])),
               help="step size of the meta update towards the inner loop's weights")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.inner_names = [name for name, _ in self.network.named_parameters()]
        self.inner_optimizer = self.new_optimizer([_detached_copy(p) for p in self.network.parameters()])
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=hparams["meta_lr"])

    def optimizers(self):
        # checkpoints and the quantization swap read the inner optimizer's params: bring them in line first
        self._inner_weights()
        return {"meta_optimizer": self.optimizer, "inner_optimizer": self.inner_optimizer}

    def _inner_weights(self) -> dict:
        """theta_tilde by parameter name: the inner optimizer's params, re-created from the
        network's (each keeping its optimizer state) when those differ in name, device or dtype."""
        group = self.inner_optimizer.param_groups[0]
        inner = dict(zip(self.inner_names, group["params"]))
        network = dict(self.network.named_parameters())
        if list(inner) == list(network) and all(
                inner[name].device == p.device and inner[name].dtype == p.dtype for name, p in network.items()):
            return inner
        state = self.inner_optimizer.state
        fresh = {name: _detached_copy(p) for name, p in network.items()}
        for name, p in fresh.items():
            if name in inner and inner[name] in state:
                state[p] = state.pop(inner[name])
        group["params"] = list(fresh.values())
        self.inner_names = list(fresh)
        return fresh

    def update(self, minibatches):
        inner_weights = self._inner_weights()
        with torch.no_grad():
            for name, theta in self.network.named_parameters():
                inner_weights[name].copy_(theta)
        inner_buffers = {name: b.clone() for name, b in self.network.named_buffers()}
        for x, y in minibatches:
            loss = F.cross_entropy(functional_call(self.network, (inner_weights, inner_buffers), (x,)), y)
            self.inner_optimizer.zero_grad(set_to_none=True)
            self.backward(loss)
            self.optimizer_step(self.inner_optimizer)

        meta_lr = self.hparams["meta_lr"]
        with torch.no_grad():
            for name, theta in self.network.named_parameters():
                theta.grad = theta - inner_weights[name]
            for name, b in self.network.named_buffers():
                b_tilde = inner_buffers[name]
                if b.is_floating_point():
                    b.add_(b_tilde - b, alpha=meta_lr)
                else:
                    b.copy_(b_tilde)
        self.optimizer.step()  # never unscaled: theta - theta_tilde carries no loss scale
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach()}
