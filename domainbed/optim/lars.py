"""LARS as DomainBed's ERM++ steps it (You, Gitman & Ginsburg, "Large Batch Training of
Convolutional Networks", 2017, in the simplified form of MAE / DINO that DomainBed copies).

For a parameter w of two or more dimensions (weights of convolutions and linear layers), with
g its gradient, lambda the weight decay, eta the trust coefficient, m the momentum:

    d = g + lambda w
    q = eta ||w|| / ||d||   when ||w|| > 0 and ||d|| > 0, else 1
    mu <- m mu + q d        (mu starts at 0)
    w  <- w - lr mu

Biases and normalisation scales (one dimension or none) take neither the weight decay nor the
rate scaling: mu <- m mu + g.

Why not timm's `Lars`: its trust ratio is eta ||w|| / (||g|| + lambda ||w|| + eps), not
eta ||w|| / ||g + lambda w||, and it scales every parameter its group adapts, biases included;
DomainBed's ERM++ numbers come from the rule above.
"""

import torch


class LARS(torch.optim.Optimizer):
    """Args: params, lr, weight_decay (lambda), momentum (m, 0.9 as DomainBed's), trust_coefficient
    (eta, 0.001). Its state per parameter is `mu`, the momentum buffer."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                d = w.grad
                if w.ndim > 1:
                    d = d.add(w, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(d)
                    q = torch.where((w_norm > 0) & (d_norm > 0), group["trust_coefficient"] * w_norm / d_norm,
                                    torch.ones_like(w_norm))
                    d = d.mul(q)
                state = self.state[w]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(w)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                w.add_(mu, alpha=-group["lr"])
        return loss
