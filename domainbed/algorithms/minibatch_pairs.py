"""DomainBed's `random_pairs_of_minibatches`: the domains in a random cyclic order, each paired
with the next, both cut to the shorter length (used by Mixup and MLDG)."""

import torch


def random_pairs_of_minibatches(minibatches) -> list:
    """[((x_i, y_i), (x_j, y_j)), ...], one pair per domain; the order comes from torch.randperm
    on the global generator, as DomainBed's. With one domain it is paired with itself."""
    order = torch.randperm(len(minibatches)).tolist()
    pairs = []
    for k, i in enumerate(order):
        j = order[(k + 1) % len(order)]
        (x_i, y_i), (x_j, y_j) = minibatches[i], minibatches[j]
        n = min(len(x_i), len(x_j))
        pairs.append(((x_i[:n], y_i[:n]), (x_j[:n], y_j[:n])))
    return pairs
