"""LSQ: Learned Step Size Quantization of weights (Esser et al., ICLR 2020), per output channel.

With b bits, signed codes live in [-Qn, Qp] = [-2^(b-1), 2^(b-1) - 1]. For a weight w and its
channel's step s:

    v     = clamp(w / s', -Qn, Qp)                  s' = s with its gradient scaled by g
    w_hat = round(v) * s'                           round passes its gradient straight through
    g     = 1 / sqrt(Qp * N_W)                      N_W = number of weights in the layer

which gives LSQ's gradients (its eq. 3 for the step, the straight-through mask for the weight):

    d w_hat / d w = 1 if -Qn < w/s < Qp else 0
    d w_hat / d s = g * (round(w/s) - w/s)  inside,  g * (-Qn)  below,  g * Qp  above

and the step of each output channel starts at 2 * mean|w| / sqrt(Qp) over that channel.

Differences from QT-DoG's code (saqibjaved1/QT-DoG, domainbed/quan/quantizer/lsq.py, itself
from zhutmost/lsq-net):
- The straight-through round and the gradient scaling are autograd functions whose forward is
  exactly round(x) and x; the official `(y - x).detach() + x` trick adds and subtracts s * g in
  float32, so the step it multiplies by can differ from `s` in the last bit. Ours makes the
  fake-quantized weight exactly code * s, which the compact checkpoint relies on to load back to
  identical predictions.
- A channel whose weights are all zero would start with step 0 and divide by zero; its step
  starts at the smallest normal float32 instead.
- N_W in g is the whole layer's weight count even though steps are per channel, as the official
  code and LSQ's definition of g (per layer) both do.
"""

import math

import torch

from domainbed.errors import UsageError

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UsageError(f"q_bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def code_range(bits: int) -> tuple[int, int]:
    """(Qn, Qp): signed codes run from -Qn to Qp."""
    check_bits(bits)
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def gradient_scale(weight: torch.Tensor, bits: int) -> float:
    """LSQ's g = 1 / sqrt(Qp * N_W)."""
    _, q_p = code_range(bits)
    return 1.0 / math.sqrt(q_p * weight.numel())


def step_shape(weight: torch.Tensor) -> tuple:
    """One step per output channel, broadcastable against the weight: (C_out, 1, ..., 1)."""
    return (weight.shape[0],) + (1,) * (weight.dim() - 1)


@torch.no_grad()
def initial_step_size(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """2 * mean|w| / sqrt(Qp) per output channel, shaped by `step_shape`."""
    _, q_p = code_range(bits)
    mean_abs = weight.detach().abs().flatten(1).mean(dim=1).view(step_shape(weight))
    step = 2 * mean_abs / math.sqrt(q_p)
    return step.clamp_min(torch.finfo(torch.float32).tiny)


class _RoundStraightThrough(torch.autograd.Function):
    # forward/setup_context split and a generated vmap rule so torch.func (Fishr's per-sample
    # gradients) can run through quantized layers
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.round(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ScaleGradient(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, scale):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.scale = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def fake_quantize(weight: torch.Tensor, step_size: torch.Tensor, bits: int) -> torch.Tensor:
    """w_hat = round(clamp(w / s, -Qn, Qp)) * s, with LSQ's gradients for w and s."""
    q_n, q_p = code_range(bits)
    step = _ScaleGradient.apply(step_size, gradient_scale(weight, bits))
    codes = _RoundStraightThrough.apply(torch.clamp(weight / step, -q_n, q_p))
    return codes * step


@torch.no_grad()
def integer_codes(weight: torch.Tensor, step_size: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer codes round(clamp(w / s, -Qn, Qp)) as int32; codes * s == fake_quantize(w, s)."""
    q_n, q_p = code_range(bits)
    return torch.round(torch.clamp(weight / step_size, -q_n, q_p)).to(torch.int32)
