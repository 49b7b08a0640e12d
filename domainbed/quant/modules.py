"""Conv2d and Linear layers whose weights are fake-quantized by LSQ in every forward pass.

`QuantConv2d.from_float(conv, bits)` takes over the float layer's own `weight` and `bias`
Parameter objects (the latent weights), so an optimizer that already holds them keeps their
state (Adam's moments); the only new Parameter is `step_size`, one LSQ step per output channel.
Activations stay in float, as in QT-DoG (its activation quantizer is built but never called).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.quant import lsq


class _Quantized:
    """The LSQ weight quantizer shared by the quantized layers."""

    bits: int

    def _adopt(self, float_module: nn.Module, bits: int) -> None:
        self.bits = lsq.check_bits(bits)
        self.weight = float_module.weight
        self.bias = float_module.bias
        self.step_size = nn.Parameter(lsq.initial_step_size(self.weight, bits))
        self.train(float_module.training)

    def quantized_weight(self) -> torch.Tensor:
        return lsq.fake_quantize(self.weight, self.step_size, self.bits)

    def integer_codes(self) -> torch.Tensor:
        return lsq.integer_codes(self.weight, self.step_size, self.bits)


class QuantConv2d(_Quantized, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int) -> "QuantConv2d":
        # built on the meta device: its own weights are replaced by the float layer's at once
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                     padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
        module._adopt(conv, bits)
        return module

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self):
        return f"{super().extra_repr()}, bits={self.bits}"


class QuantLinear(_Quantized, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int) -> "QuantLinear":
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        module._adopt(linear, bits)
        return module

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self):
        return f"{super().extra_repr()}, bits={self.bits}"


QUANTIZED_TYPES = (QuantConv2d, QuantLinear)
