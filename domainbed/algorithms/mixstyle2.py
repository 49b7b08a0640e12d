"""Mixstyle2: MixStyle with domain labels (Zhou et al., "Domain Generalization with MixStyle",
ICLR 2021, the "cross-domain" variant), as SWAD's `Mixstyle2`.

Each forward pass sees a batch whose first half comes from one domain and second half from
another; MixStyle (domainbed/algorithms/mixstyle.py) then mixes every instance's feature
statistics with those of a random instance of the other half:

    perm = (random permutation of the second half, random permutation of the first half)

One update, for each domain i and j = the next domain (cyclically, in environment order, as
SWAD's `pair_batches`): the first half of domain i's minibatch with the second half of domain
j's, loss = mean over the pairs of CE(f(x_pair), y_pair). Hparams as Mixstyle's (p = 0.5,
alpha = 0.1, SWAD's `resnet*_mixstyle2_L234_p0d5_a0d1`).

Departures from SWAD's code (khanrc/swad): the halves are cut to the same length (SWAD's
`chunk(2)` gives unequal halves for an odd batch, and its permutation then mixes within a
domain); the other departures are Mixstyle's (hooks on the registry's ResNet, torch's generator
for the coin flip).
"""

import torch
import torch.nn.functional as F

from domainbed.algorithms.mixstyle import Mixstyle, MixStyle
from domainbed.algorithms.registry import register_algorithm


class CrossDomainMixStyle(MixStyle):
    def partners(self, batch: int) -> torch.Tensor:
        """Each instance of one half mixes with a random instance of the other half."""
        half = batch // 2
        first, second = torch.arange(half), torch.arange(half, batch)
        return torch.cat([second[torch.randperm(len(second))], first[torch.randperm(half)]])


def pair_batches(minibatches) -> list:
    """[(x, y)]: for each domain i, its first half followed by the next domain's second half."""
    pairs = []
    for i, (x_i, y_i) in enumerate(minibatches):
        x_j, y_j = minibatches[(i + 1) % len(minibatches)]
        n = min(len(x_i) // 2, len(x_j) // 2)
        pairs.append((torch.cat([x_i[:n], x_j[len(x_j) - n:]]), torch.cat([y_i[:n], y_j[len(y_j) - n:]])))
    return pairs


@register_algorithm("Mixstyle2")
class Mixstyle2(Mixstyle):
    style_mixer = CrossDomainMixStyle

    def update(self, minibatches):
        pairs = pair_batches(minibatches)
        loss = sum(F.cross_entropy(self.predict(x), y) for x, y in pairs) / len(pairs)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}
