"""The fp8 precision: the U-Net's residual blocks rebuilt around FP8 3x3 convolutions, and attention
around an FP8 qkv projection.

A residual block is most of the U-Net's time (two 3x3 convolutions and two GroupNorm+SiLU passes
at every resolution). Here each GroupNorm+SiLU writes FP8 straight into the next convolution's
input, the time embedding is added in the first convolution's epilogue, and the skip connection in
the second's. Attention's norm writes FP8 for its qkv projection in the same way. Everything else
(SDPA and attention's output projection, down/upsampling, the input and output convolutions) stays
in fp16: their inputs are not normalised, so FP8 would need a scale per tensor. Weights are
quantised once: the convolutions' per output channel, the qkv projection's per tensor (`Fp8Linear`).

FP8 changes the samples: it is a precision of its own, served only from live PyTorch weights (no
export), and `ddpm-triton evaluate` measures it against fp32 like any other. Inference only:
dropout is left out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.conv3x3 import conv3x3_fp8, conv3x3_fp8_stats, fused_statistics, pack_weight
from .kernels.quantize import quantize_tensor
from .fastpath import TokenAttention, TokenLinear, TritonGroupNorm
from .unet import ResBlock, SelfAttention

MIN_CAPABILITY = (8, 9)  # FP8 tensor-core instructions: Ada and Hopper onwards
# Below this, the first convolution's epilogue statistics cost more than GroupNorm's second read
# of its output. At 8x8 and 4x4 a tile holds several images, and the per-image reductions cost
# +13 us per convolution against ~3 us of reading; at 16x16 it is close (+9-11 us), and leaving
# them to GroupNorm measured 0.02 ms faster per U-Net call on the H100 (benchmarks/README.md).
STATISTICS_MIN_PIXELS = 1024


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

    def forward(
        self, x: torch.Tensor, row: torch.Tensor | None = None, residual: torch.Tensor | None = None,
        skip_inputs: Sequence[torch.Tensor] = (), skip_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        return conv3x3_fp8(x, self.weight, self.scale, self.bias, row, residual, list(skip_inputs), skip_weight)

    def with_statistics(self, x: torch.Tensor, row: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and its GroupNorm statistics (`conv3x3_fp8_stats`), where `fused_statistics(x)`."""
        return conv3x3_fp8_stats(x, self.weight, self.scale, self.bias, row)


class Fp8Linear(nn.Module):
    """A `TokenLinear` whose tokens arrive in FP8 (unscaled): cuBLAS's FP8 matmul, the bias in its epilogue.

    cuBLAS scales an FP8 product by tensor (or by row and column, but then writes bf16 only), so the
    weights take one scale for the whole matrix; e4m3 keeps each weight's 3 mantissa bits over 18
    binades all the same. At attention's qkv projection of the CIFAR-10 U-Net ([65536, 256] x [256,
    768], batch 256) on the H100: 51-53 us, against 60-63 for cuBLAS in fp16 and 69-97 for a Triton
    FP8 matmul with per-channel scales, whose short K (two steps) left it store-bound.
    """

    ROWS = 16  # cuBLAS's FP8 matmul takes row counts in multiples of this

    def __init__(self, linear: TokenLinear) -> None:
        super().__init__()
        weight, scale = quantize_tensor(linear.weight)
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("unit", torch.ones((), device=scale.device))  # the tokens' scale
        self.register_buffer("bias", linear.bias.detach().half())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        rows = t.reshape(-1, t.shape[-1])
        short = -rows.shape[0] % self.ROWS
        if short:
            rows = torch.cat([rows, rows.new_zeros(short, rows.shape[1])])
        out = torch._scaled_mm(rows, self.weight.t(), self.unit, self.scale, bias=self.bias, out_dtype=torch.float16)
        return out[: out.shape[0] - short].view(*t.shape[:-1], -1)


def fp8_attention(attention: SelfAttention) -> TokenAttention:
    """`fastpath.TokenAttention` whose norm writes FP8 for an FP8 qkv projection (`Fp8Linear`).

    The norm's output is unit-sized like the residual blocks' FP8 inputs, so it needs no scale either.
    SDPA and the output projection stay fp16: attention's output is not normalised.
    """
    fast = TokenAttention(attention, triton_kernels=True)
    fast.norm = TritonGroupNorm(attention.norm, silu=False, fp8_out=True)
    fast.qkv = Fp8Linear(fast.qkv)
    return fast


class Fp8ResBlock(nn.Module):
    """`unet.ResBlock`'s function with FP8 convolutions and the additions moved into their epilogues.

    A 1x1 skip projection runs inside the second convolution, as more K steps of its accumulator
    (`conv3x3_fp8`'s skip inputs); its bias is folded into that convolution's. A decoder block's
    input comes in two parts (`tail`: the encoder's skip connection), which the GroupNorm and the
    projection read where they lie, so the concatenation is never written.
    """

    def __init__(self, block: ResBlock) -> None:
        super().__init__()
        self.norm1, self.conv1 = TritonGroupNorm(block.norm1, silu=True, fp8_out=True), Fp8Conv3x3(block.conv1)
        self.norm2, self.conv2 = TritonGroupNorm(block.norm2, silu=True, fp8_out=True), Fp8Conv3x3(block.conv2)
        self.emb = block.emb
        projects = isinstance(block.skip, nn.Conv2d)  # else the skip connection is the identity
        self.register_buffer("skip_weight", block.skip.weight.detach()[:, :, 0, 0].contiguous() if projects else None)
        if projects:
            self.conv2.bias += block.skip.bias.detach().float()

    def absorb_input_bias(self, bias: torch.Tensor) -> None:
        """From now on x arrives without `bias` (per channel of x) added: its producer leaves it to this
        block, whose GroupNorm adds it as it reads x and whose skip projection carries it in the
        second convolution's bias (W_skip (x + b) = W_skip x + W_skip b)."""
        if self.skip_weight is None:
            raise ValueError("only a block with a skip projection can take over its input's bias")
        bias = bias.detach().float()
        self.norm1.head_bias = bias
        self.conv2.bias += self.skip_weight[:, : bias.numel()].float() @ bias

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tail: torch.Tensor | None = None) -> torch.Tensor:
        normed, row = self.norm1(x, tail), self.emb(F.silu(emb))
        if fused_statistics(normed) and normed.shape[2] * normed.shape[3] >= STATISTICS_MIN_PIXELS:
            # The first convolution's epilogue computes what norm2 needs.
            h, stats = self.conv1.with_statistics(normed, row)
            normed = self.norm2(h, stats=stats)
        else:
            normed = self.norm2(self.conv1(normed, row=row))
        if self.skip_weight is not None:
            return self.conv2(normed, skip_inputs=[x] if tail is None else [x, tail], skip_weight=self.skip_weight)
        return self.conv2(normed, residual=x if tail is None else torch.cat([x, tail], dim=1))


def use_fp8_layers(model: nn.Module) -> nn.Module:
    """Replace, in place, every ResBlock of an fp16 U-Net with an Fp8ResBlock and every SelfAttention
    with `fp8_attention`'s; returns the model."""
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
            elif isinstance(child, SelfAttention):
                setattr(parent, name, fp8_attention(child))
    return model
