"""The live PyTorch path's U-Net layers, rewritten for channels_last memory: the same functions in fewer passes.

Exports trace `unet.UNet` as it is written. The PyTorch runner, which is the server's GPU fast path,
swaps these layers in (`use_fast_layers`). Each layer is checked against the layer it replaces in
tests/test_fastpath.py, and its measured effect is in benchmarks/README.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import SelfAttention, UNet, Upsample


def tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] as [B, H*W, C]: a view of channels_last memory (a copy of any other layout)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def feature_map(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H*W, C] tokens as the [B, C, H, W] feature map whose channels_last memory they are."""
    b, _, c = t.shape
    return t.view(b, height, width, c).permute(0, 3, 1, 2)


class TritonGroupNorm(nn.Module):
    """An nn.GroupNorm, SiLU after it when `silu`, on fp16 channels_last activations through the
    Triton kernel of `kernels.group_norm`, which reads that memory as it lies; FP8 out when `fp8_out`."""

    def __init__(self, norm: nn.GroupNorm, silu: bool, fp8_out: bool) -> None:
        super().__init__()
        from .kernels.group_norm import group_norm  # imports triton: only where a GPU path asks for it

        self.op = group_norm
        self.groups, self.eps, self.silu, self.fp8_out = norm.num_groups, norm.eps, silu, fp8_out
        self.register_buffer("weight", norm.weight.detach().float())
        self.register_buffer("bias", norm.bias.detach().float())
        self.register_buffer("head_bias", None)  # a bias the producer of x left out (`Fp8ResBlock.absorb_input_bias`)

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None = None, stats: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(
            x, tail, self.weight, self.bias, self.groups, self.eps, self.silu, self.fp8_out, stats, self.head_bias
        )


class TokenLinear(nn.Module):
    """A 1x1 convolution as a linear layer over tokens: [..., C_in] -> [..., C_out]."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.bias is None:
            raise ValueError(f"{conv} is not a 1x1 convolution with a bias")
        self.register_buffer("weight", conv.weight.detach()[:, :, 0, 0].contiguous())
        self.register_buffer("bias", conv.bias.detach())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, self.weight, self.bias)


class TokenAttention(nn.Module):
    """`unet.SelfAttention` with the pixels as tokens.

    A channels_last feature map already is [B, HW, C] in memory. As tokens, the 1x1 projections are
    plain matmuls, and q, k and v are strided views of one qkv tensor that SDPA reads in place. The
    NCHW formulation has Inductor transpose q, k, v and the output instead, which was most of the
    compiled attention block's time on the H100 (benchmarks/README.md). With `triton_kernels` the
    norm is the Triton GroupNorm and the output projection adds the residual in its epilogue
    (`kernels.linear.linear_residual`).
    """

    def __init__(self, attention: SelfAttention, triton_kernels: bool) -> None:
        super().__init__()
        self.heads = attention.heads
        self.norm = TritonGroupNorm(attention.norm, silu=False, fp8_out=False) if triton_kernels else attention.norm
        self.project = _linear_then_add
        if triton_kernels:
            from .kernels.linear import linear_residual  # imports triton: only where a GPU path asks for it

            self.project = linear_residual
        self.qkv, self.proj = TokenLinear(attention.qkv), TokenLinear(attention.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(tokens(self.norm(x)))  # channels (q|k|v, head, head_dim)
        q, k, v = qkv.view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * h * w, c)
        projected = self.project(out, self.proj.weight, self.proj.bias, tokens(x).reshape(b * h * w, c))
        return feature_map(projected.view(b, h * w, c), h, w)


def _linear_then_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return residual + F.linear(x, weight, bias)


# Where each of a 3x3 kernel's taps lands in the 4-tap kernel of a stride-2 transposed convolution
# (padding 1), along one axis: upsampled row 2i sees input rows i-1 (tap 0) and i (taps 1, 2), row
# 2i+1 sees i (taps 0, 1) and i+1 (tap 2), and the transposed kernel's taps 3, 1 (even rows) and
# 2, 0 (odd rows) weigh input rows i-1, i and i, i+1.
_FOLD = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


class TransposedUpsample(nn.Module):
    """`unet.Upsample` (nearest x2, then a 3x3 convolution) as one 4x4 transposed convolution of stride 2.

    Through the upsampled image's 3x3 window each output pixel sees only 2x2 distinct input pixels,
    weighed by sums of the 3x3 taps that depend on the pixel's row and column parity: exactly a
    stride-2 transposed convolution, whose 4x4 kernel holds those sums. That is 16 multiply-adds
    per 4 output pixels instead of 36, and the upsampled copy is never written. Against the same
    fold as a 2x2 convolution with 4x the output channels at the input's resolution, whose phases
    were then interleaved by a copy, cuDNN's strided transposed convolution writes the output in
    place: 0.043 -> 0.035, 0.105 -> 0.079 and 0.322 -> 0.308 ms at the CIFAR-10 U-Net's three
    upsamplings at batch 256 on the H100 (benchmarks/README.md).
    """

    def __init__(self, upsample: Upsample) -> None:
        super().__init__()
        conv = upsample.conv
        fold = torch.tensor(_FOLD, dtype=torch.float64, device=conv.weight.device)  # [4 taps, 3 taps]
        weight = torch.einsum("ak,bl,oikl->ioab", fold, fold, conv.weight.detach().double())
        self.register_buffer("weight", weight.to(conv.weight.dtype).contiguous())
        self.register_buffer("bias", conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1)


class ChannelPaddedConv(nn.Module):
    """An nn.Conv2d with its channel counts padded to multiples of 8, and its bias in an input channel.

    What pays is the bias. Where an input channel is padded anyway, one of them is all ones and only
    the kernel's centre tap weighs it, by the bias (with `same` padding that tap never leaves the
    image). Added after the convolution, the bias was a pointwise pass that torch.compile wrote
    twice for the input convolution, once per consumer, and recomputed for the decoder's last skip
    input; carrying it here took a batch-256 fp8 call on the H100 from 7.11 to 6.95 ms.

    The padding alone (3 image channels to 8, zeros in, extra outputs sliced off; the result is the
    same) measured 7.12 -> 7.10 ms: cuDNN keeps its sm80 kernels for the input and output
    convolutions (0.10 and 0.07 ms) with 8 channels too. It stays as it was measured.
    """

    MULTIPLE = 8

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1) or isinstance(conv.padding, str):
            raise ValueError(f"{conv} is not a plain convolution with explicit padding")
        out_channels, in_channels = conv.weight.shape[:2]
        self.in_channels, self.out_channels = in_channels, out_channels
        padded_in, padded_out = (-(-c // self.MULTIPLE) * self.MULTIPLE for c in (in_channels, out_channels))
        weight = conv.weight.detach().new_zeros(padded_out, padded_in, *conv.kernel_size)
        weight[:out_channels, :in_channels] = conv.weight.detach()
        bias = None if conv.bias is None else conv.weight.detach().new_zeros(padded_out)
        centre = tuple(k // 2 for k in conv.kernel_size)
        self.bias_channel = bias is not None and in_channels < padded_in and conv.padding == centre and all(k % 2 for k in conv.kernel_size)
        if self.bias_channel:
            weight[:out_channels, in_channels, centre[0], centre[1]] = conv.bias.detach()
            bias = None
        elif bias is not None:
            bias[:out_channels] = conv.bias.detach()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding = conv.stride, conv.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        extra = self.weight.shape[1] - self.in_channels
        if self.bias_channel:
            x = torch.cat([x, x.new_ones(b, 1, h, w), x.new_zeros(b, extra - 1, h, w)], dim=1)
        elif extra:
            x = torch.cat([x, x.new_zeros(b, extra, h, w)], dim=1)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)[:, : self.out_channels]


def _is_same_3x3(conv: nn.Conv2d) -> bool:
    """A 3x3 convolution of stride 1 and padding 1 (the output is the input's size), ungrouped."""
    return (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) == ((3, 3), (1, 1), (1, 1), (1, 1), 1)


class TapMatmulConv(nn.Module):
    """A 3x3 convolution with few output channels (the predicted noise) as one matmul, then a shifted sum.

    The matmul gives, at every input pixel, what each of the 9 taps contributes to the output pixel
    it lands on ([pixels, C_in] x [C_in, 9 * C_out]); a pointwise pass adds each output pixel's 9
    contributions from its neighbours and the bias. With 3 output channels a convolution kernel is
    all reading: for the CIFAR-10 U-Net's output convolution (128 -> 3) at batch 256 on the H100,
    compiled and CUDA-graphed, cuDNN took 0.108 ms, `ChannelPaddedConv` 0.099 and this 0.047.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not _is_same_3x3(conv):
            raise ValueError(f"{conv} is not a 3x3 convolution with stride 1 and padding 1")
        out_channels, in_channels = conv.weight.shape[:2]
        self.out_channels = out_channels
        weight = conv.weight.detach().new_zeros(-(-9 * out_channels // 8) * 8, in_channels)
        weight[: 9 * out_channels] = conv.weight.detach().permute(2, 3, 0, 1).reshape(9 * out_channels, in_channels)
        self.register_buffer("weight", weight)  # rows (dy, dx, output channel), zeros up to a multiple of 8
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        o = self.out_channels
        contributions = (tokens(x).reshape(b * h * w, -1) @ self.weight.T)[:, : 9 * o]
        # Output pixel (y, x) takes tap (dy, dx) from input pixel (y + dy - 1, x + dx - 1): with a
        # border of zeros, from padded pixel (y + dy, x + dx).
        padded = F.pad(contributions.view(b, h, w, 9 * o), (0, 0, 1, 1, 1, 1))
        out = sum(padded[:, dy : dy + h, dx : dx + w, (3 * dy + dx) * o : (3 * dy + dx + 1) * o] for dy in range(3) for dx in range(3))
        if self.bias is not None:
            out = out + self.bias
        return out.permute(0, 3, 1, 2)


def _image_conv(conv: nn.Conv2d) -> nn.Module:
    """The rewrite of a convolution whose channel counts are not multiples of 8 (the image's).

    As a matmul over 3x3 patches, the input convolution measured slower than `ChannelPaddedConv`
    (0.114 against 0.071 ms compiled, CIFAR-10 at batch 256 on the H100), so only the output
    convolution is a `TapMatmulConv`.
    """
    if _is_same_3x3(conv) and conv.out_channels < 8:
        return TapMatmulConv(conv)
    return ChannelPaddedConv(conv)


def use_fast_layers(model: nn.Module, triton_kernels: bool, pad_channels: bool) -> nn.Module:
    """Replace, in place, the U-Net's layers with their rewrites; returns the model.

    triton_kernels: run the attention's norm and output projection, and the output's norm (with
    its SiLU), as the Triton kernels of `ddpm_triton.kernels` (fp16 on a CUDA GPU). pad_channels:
    rewrite convolutions whose channel counts are not multiples of 8, the image's (on a GPU): the
    output convolution as a `TapMatmulConv`, others as a `ChannelPaddedConv`, where the input
    convolution's bias rides a padded channel.

    A decoder level's first block that can add a bias to its input as it reads it (`fp8.Fp8ResBlock`'s
    `absorb_input_bias`) takes over the upsampling's bias, which saves a pass over the upsampled
    features: Inductor's kernels in a batch-256 fp8 call of the CIFAR-10 U-Net went from 0.20 to
    0.07 ms on the H100 (benchmarks/README.md).
    """
    if triton_kernels and isinstance(model, UNet):
        model.norm_out, model.act_out = TritonGroupNorm(model.norm_out, silu=True, fp8_out=False), nn.Identity()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SelfAttention):
                setattr(parent, name, TokenAttention(child, triton_kernels))
            elif isinstance(child, Upsample):
                setattr(parent, name, TransposedUpsample(child))
            elif pad_channels and isinstance(child, nn.Conv2d) and (child.in_channels % 8 or child.out_channels % 8):
                setattr(parent, name, _image_conv(child))
    if isinstance(model, UNet):
        for upsample, level in zip(model.upsample, list(model.up)[1:]):
            consumer = level.blocks[0]
            absorbs = hasattr(consumer, "absorb_input_bias")
            if isinstance(upsample, TransposedUpsample) and upsample.bias is not None and absorbs:
                consumer.absorb_input_bias(upsample.bias)
                upsample.bias = None
    return model
