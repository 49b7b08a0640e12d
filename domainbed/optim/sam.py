"""The sharpness-aware perturbation step shared by SAM, GSAM and SAGM, as an optimizer wrapper.

Every member of the family takes two gradients on the same batch: g at the weights w and g_p at
the perturbed weights w + e, then hands one combined gradient to a base optimizer (Adam here):

    e   = s(||g||) * g          (times w^2 elementwise in the `adaptive` variant, as ASAM)
    w  <- w + e ; g_p = grad L(w + e) ; w <- w - e
    w  <- base_optimizer.step(combine(g, g_p))

and the three differ only in the perturbation scale s and in `combine`:

    SAM  (Foret et al., ICLR 2021)   s = rho / ||g||          combine = g_p
    GSAM (Zhuang et al., ICLR 2022)  s = rho / ||g||          combine = g_p - alpha * g_orth
    SAGM (Wang et al., CVPR 2023)    s = rho / ||g|| - alpha  combine = (g + g_p) / 2

where g_orth is the part of g orthogonal to g_p. Norms are taken over all parameters together
(|w| * g in the adaptive variant), with `eps` = 1e-12 added as the official code does.

Use (the caller owns the forward/backward passes, so it can freeze BatchNorm statistics for the
perturbed one with `frozen_running_stats`):

    loss = criterion(model(x), y); loss.backward()        # g
    optimizer.first_step(zero_grad=True)                   # w <- w + e
    with frozen_running_stats(model):
        criterion(model(x), y).backward()                  # g_p
    optimizer.second_step(zero_grad=True)                  # w <- w - e, then the base step

Under fp16 loss scaling both gradients must be unscaled before use: the first before
`first_step` (the perturbation depends on its norm), the second before `second_step`; the SAM
algorithm does this through `Algorithm.unscale_gradients` and passes `optimizer_step` as
`base_step`. A first gradient that overflowed must not move w, and its step must be skipped:
`first_step(finite=...)` takes e = 0 where the flag (a device tensor) is False, and
`skip_base_step_unless(flag)` makes the second gradient NaN then, so that GradScaler skips the
base step; both decide on the device, without waiting for it.

or `optimizer.step(closure)` with a closure that zeroes the gradients, runs forward and
backward and returns the loss. The wrapper shares `param_groups` with the base optimizer (an lr
schedule on either moves both) and keeps g and e in float32 only between the two half-steps, so
its state dict carries nothing that a checkpoint of the base optimizer does not.

Differences from the official code (davda54/sam, juntang-zhuang/GSAM, Wang-pengfei/SAGM):
- rho is a constant taken from the hparams. The official SAGM code builds a rho scheduler with
  max = min = 0.05 and so ignores its `rho` hparam; our default 0.05 gives the same step. GSAM's
  official rho schedule follows the learning rate, which is constant in DomainBed, so rho_max is
  the constant rho here.
- The restore is w <- w - e, exactly as the official code (no saved copy of w), so (w + e) - e
  may differ from w by float32 rounding there as well.
- g and e live in float32 whatever the parameter dtype; the official code keeps them in the
  parameter dtype.
- No gradient all-reduce across workers (the harness trains on one device).
"""

import contextlib

import torch
import torch.nn as nn

from domainbed.errors import UsageError


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module):
    """BatchNorm running statistics stay as they are inside the block: momentum is 0 there.

    The perturbed forward pass must not move the running mean and variance (SAGM, SAM and GSAM
    official code all do this); `num_batches_tracked` is restored too, which matters only for
    layers with momentum=None (a cumulative average).
    """
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            tracked = module.num_batches_tracked
            saved.append((module, module.momentum, None if tracked is None else tracked.clone()))
            module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum, tracked in saved:
            module.momentum = momentum
            if tracked is not None:
                module.num_batches_tracked.copy_(tracked)


def _global_norm(tensors) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization: e = rho * g / ||g||, the base optimizer steps with g_p.

    Args:
        base_optimizer: the optimizer that takes the final step (its param_groups are shared).
        rho: radius of the perturbation (>= 0).
        adaptive: ASAM's scale-invariant variant (norm of |w| * g, perturbation times w^2).
        eps: added to the gradient norm, 1e-12 as in the official code.
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 adaptive: bool = False, eps: float = 1e-12):
        if not rho >= 0.0:
            raise UsageError(f"rho must be a number >= 0, got {rho!r}")
        params = [p for group in base_optimizer.param_groups for p in group["params"]]
        super().__init__(params, dict(rho=rho, adaptive=bool(adaptive)))
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.rho = float(rho)
        self.adaptive = bool(adaptive)
        self.eps = eps

    def _params_with_grad(self):
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def perturbation_scale(self, grad_norm: torch.Tensor) -> torch.Tensor:
        """s in e = s * g."""
        return self.rho / (grad_norm + self.eps)

    def combine(self, g: list, g_p: list) -> list:
        """The gradient handed to the base optimizer, from g (at w) and g_p (at w + e); g_p may
        be overwritten."""
        return g_p

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, finite=True) -> None:
        """w <- w + e(w), from the gradients g now in `.grad` (taken over, not copied, when
        `zero_grad` clears `.grad` for the perturbed backward pass). `finite`: whether g is
        finite, True or a 0-dim bool tensor (fp16's verdict, `Algorithm.unscale_gradients`);
        where it is False, e = 0 and w stays as it is."""
        params = self._params_with_grad()
        g = [p.grad.detach().to(torch.float32, copy=not zero_grad) for p in params]
        if self.adaptive:
            grad_norm = _global_norm([p.detach().abs().float() * g_i for p, g_i in zip(params, g)])
        else:
            grad_norm = _global_norm(g)
        scale = self.perturbation_scale(grad_norm)
        for p, g_i in zip(params, g):
            e = g_i * scale
            if self.adaptive:
                e.mul_(p.detach().float().pow(2))
            if finite is not True:
                e = torch.where(finite, e, 0.0)
            p.add_(e.to(p.dtype))
            self.state[p]["g"] = g_i
            self.state[p]["e"] = e
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def skip_base_step_unless(self, finite) -> None:
        """With `finite` a 0-dim bool tensor that is False, make one gradient now in `.grad` NaN
        (times 1 where True: unchanged), so that GradScaler's inf check before the base step finds
        it and the step is skipped. `finite` True: nothing to do."""
        if finite is True:
            return
        params = self._params_with_grad()
        if params:
            params[0].grad.mul_(torch.where(finite, 1.0, float("nan")).to(params[0].grad.dtype))

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, base_step=None) -> None:
        """w <- w - e, then one base-optimizer step on combine(g, g_p), g_p being in `.grad`.
        `base_step(base_optimizer)` takes that step (default `base_optimizer.step()`); an
        algorithm passes its `optimizer_step` so that fp16 loss scaling can skip it."""
        params = [p for group in self.param_groups for p in group["params"] if "e" in self.state.get(p, {})]
        for p in params:
            p.sub_(self.state[p]["e"].to(p.dtype))
            if p.grad is None:  # no path from the loss at w + e: g_p = 0
                p.grad = torch.zeros_like(p)
        g = [self.state[p]["g"] for p in params]
        g_p = [p.grad.float() for p in params]
        for p, direction in zip(params, self.combine(g, g_p)):
            if direction is not p.grad:
                p.grad.copy_(direction)
        self.state.clear()
        if base_step is None:
            self.base_optimizer.step()
        else:
            base_step(self.base_optimizer)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure=None):
        """Both half-steps; `closure` zeroes the gradients, runs forward and backward and returns
        the loss. Returns the loss at w (the first call)."""
        if closure is None:
            raise UsageError(f"{type(self).__name__}.step needs a closure (two forward-backward passes per step)")
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()
        return loss


class GSAM(SAM):
    """Surrogate Gap Guided SAM: step with g_p - alpha * g_orth, where g = g_par + g_orth is split
    along g_p (g_par = <g, g_p> / ||g_p||^2 * g_p). Ascending along g_orth lowers the surrogate gap
    L(w + e) - L(w) without changing the perturbed loss to first order."""

    def __init__(self, base_optimizer, rho: float = 0.05, alpha: float = 0.01,
                 adaptive: bool = False, eps: float = 1e-12):
        super().__init__(base_optimizer, rho, adaptive, eps)
        self.alpha = float(alpha)

    def combine(self, g, g_p):
        inner = torch.stack([(a * b).sum() for a, b in zip(g, g_p)]).sum()
        norm_g, norm_p = _global_norm(g), _global_norm(g_p)
        # ||g|| cos(g, g_p) / ||g_p||, with the official code's eps placement
        cosine = inner / (norm_g * norm_p + self.eps)
        parallel_scale = cosine * norm_g / (norm_p + self.eps)
        return [b - self.alpha * (a - parallel_scale * b) for a, b in zip(g, g_p)]


class SAGM(SAM):
    """Sharpness-Aware Gradient Matching: e = (rho / ||g|| - alpha) * g, step with (g + g_p) / 2.

    Stepping with (g + g_p) / 2 minimises L(w) and L(w + e) together, which also shrinks their
    gap; the perturbation starts from w - alpha * g, a small descent step, rather than from w."""

    def __init__(self, base_optimizer, rho: float = 0.05, alpha: float = 0.001,
                 adaptive: bool = False, eps: float = 1e-12):
        super().__init__(base_optimizer, rho, adaptive, eps)
        self.alpha = float(alpha)

    def perturbation_scale(self, grad_norm):
        return self.rho / (grad_norm + self.eps) - self.alpha

    def combine(self, g, g_p):
        # (g_p + g) * 0.5 has the bits of 0.5 * (g + g_p): scaling by 0.5 is exact
        return [b.add_(a).mul_(0.5) for a, b in zip(g, g_p)]
