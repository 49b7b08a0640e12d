"""`twice_differentiable()`: a context in which every layer of a backbone can be differentiated twice.

A method that differentiates through gradients (IGA's penalty on per-domain gradients) needs the
backward of every layer to be differentiable itself. PyTorch's fused attention kernels (flash,
memory-efficient; the ViTs' `scaled_dot_product_attention` picks them on CPUs and GPUs) have no
double backward, so inside this context attention runs on the math kernel, composed of ordinary
differentiable operations, with the same result. Convolutional backbones are unaffected.
"""

import contextlib

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3: no fused attention on CPUs; CUDA's has its own switch
    SDPBackend = sdpa_kernel = None


def twice_differentiable():
    """The forward passes inside are differentiable twice (attention on the math kernel)."""
    if sdpa_kernel is None:
        import torch

        if torch.cuda.is_available():
            return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)
