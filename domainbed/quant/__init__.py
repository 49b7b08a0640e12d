"""Quantization-aware training (QT-DoG): LSQ fake-quantized layers and swapping them in.

    from domainbed.quant import quantize_model
    layers = quantize_model(algorithm, bits=7)          # {name: QuantConv2d}, swapped in place

The trainer-level option (`--quant 1 --q_steps N --q_bits B`) is domainbed/quant/extension.py;
the compact integer checkpoint is domainbed/quant/compact.py.
"""

from domainbed.quant.modules import QuantConv2d, QuantLinear
from domainbed.quant.swap import quantize_model

__all__ = ["QuantConv2d", "QuantLinear", "quantize_model"]
