"""The fp8 precision: the U-Net's residual blocks rebuilt around FP8 3x3 convolutions.

A residual block is most of the U-Net's time (two 3x3 convolutions and two GroupNorm+SiLU passes
at every resolution). Here each GroupNorm+SiLU writes FP8 straight into the next convolution's
input, the time embedding is added in the first convolution's epilogue, and the skip connection in
the second's; everything else (attention, down/upsampling, the input and output convolutions)
stays in fp16. The convolutions' weights are quantised once, per output channel.

FP8 changes the samples: it is a precision of its own, served only from live PyTorch weights (no
export), and `ddpm-triton evaluate` measures it against fp32 like any other. Inference only:
dropout is left out.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.conv3x3 import conv3x3_fp8, pack_weight
from .kernels.group_norm import group_norm_silu
from .unet import ResBlock

MIN_CAPABILITY = (8, 9)  # FP8 tensor-core instructions: Ada and Hopper onwards


class Fp8Conv3x3(nn.Module):
    """A 3x3 / padding-1 convolution's weights, packed for `conv3x3_fp8`."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1):
            raise ValueError(f"{conv} is not a 3x3 convolution with stride 1 and padding 1")
        weight, scale = pack_weight(conv.weight)
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", conv.bias.detach().float())

    def forward(self, x: torch.Tensor, row: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        return conv3x3_fp8(x, self.weight, self.scale, self.bias, row, residual)


class Fp8GroupNormSiLU(nn.Module):
    """silu(norm(x)) of an fp16 tensor, written as FP8."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.register_buffer("weight", norm.weight.detach().float())
        self.register_buffer("bias", norm.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_silu(x, self.weight, self.bias, self.groups, self.eps, True)


class Fp8ResBlock(nn.Module):
    """`unet.ResBlock`'s function with FP8 convolutions and the additions moved into their epilogues."""

    def __init__(self, block: ResBlock) -> None:
        super().__init__()
        self.norm1, self.conv1 = Fp8GroupNormSiLU(block.norm1), Fp8Conv3x3(block.conv1)
        self.norm2, self.conv2 = Fp8GroupNormSiLU(block.norm2), Fp8Conv3x3(block.conv2)
        self.emb, self.skip = block.emb, block.skip

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x), row=self.emb(F.silu(emb)))
        return self.conv2(self.norm2(h), residual=self.skip(x))


def use_fp8_resblocks(model: nn.Module) -> nn.Module:
    """Replace, in place, every ResBlock of an fp16 U-Net with an Fp8ResBlock; returns the model."""
    parameter = next(model.parameters())
    if parameter.dtype != torch.float16:
        raise ValueError(f"the fp8 blocks go into an fp16 U-Net (their other layers run fp16), not {parameter.dtype}")
    if not parameter.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("fp8 runs Triton kernels on a CUDA GPU (on a CPU only under TRITON_INTERPRET=1, for tests)")
    if parameter.is_cuda and torch.cuda.get_device_capability(parameter.device) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(parameter.device)
        raise ValueError(f"fp8 needs FP8 tensor cores (compute capability 8.9+: Ada, Hopper or newer); {name} has none")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ResBlock):
                setattr(parent, name, Fp8ResBlock(child))
    return model
