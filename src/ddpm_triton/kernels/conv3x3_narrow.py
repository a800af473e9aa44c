"""A 3x3 / padding-1 fp16 convolution for few input or output channels: the U-Net's image-facing layers.

The input convolution (3 image channels in, 128 out) and the output one (128 in, 3 out) do almost
no arithmetic; their cost is writing or reading one 128-channel feature map. cuDNN runs them as
sm80 implicit GEMMs tuned for wide channels, at 0.095 and 0.068 ms per batch-256 call on the H100
against about 0.025 ms to move that map. Here a program takes a run of pixels and all output
channels, gathers each tap's input channels (zero outside the image) and multiplies them on the
tensor cores, with the channel counts padded to what `tl.dot` takes; the bias is added as the
output is stored, channels_last, so no pass over the output follows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_DOT = 16  # the smallest K and N of a tensor-core dot
BLOCK_PIXELS = 128
MAX_BLOCK_IN = 64  # input channels per step of the accumulation


@triton.jit
def _conv3x3_narrow_kernel(
    x_ptr,  # [N, H, W, C_IN] fp16 (an NCHW tensor in channels_last memory)
    w_ptr,  # [9, C_IN, BLOCK_OUT] fp16: tap-major, output channels padded with zeros
    bias_ptr,  # [C_OUT] fp32
    out_ptr,  # [N, H, W, C_OUT] fp16
    PIXELS,  # N * H * W
    H,
    W,
    C_IN,
    C_OUT,
    BLOCK_P: tl.constexpr,
    BLOCK_IN: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    n, y, x = p // (H * W), (p // W) % H, p % W
    ci = tl.arange(0, BLOCK_IN)
    co = tl.arange(0, BLOCK_OUT)
    acc = tl.zeros((BLOCK_P, BLOCK_OUT), dtype=tl.float32)
    for tap in tl.static_range(9):
        yy, xx = y + tap // 3 - 1, x + tap % 3 - 1
        inside = (p < PIXELS) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        source = ((n * H + yy) * W + xx).to(tl.int64) * C_IN
        for c0 in range(0, C_IN, BLOCK_IN):
            channel = c0 + ci
            a = tl.load(x_ptr + source[:, None] + channel[None, :], mask=inside[:, None] & (channel < C_IN)[None, :], other=0.0)
            b = tl.load(w_ptr + (tap * C_IN + channel)[:, None] * BLOCK_OUT + co[None, :], mask=(channel < C_IN)[:, None], other=0.0)
            acc = tl.dot(a, b, acc)
    acc += tl.load(bias_ptr + co, mask=co < C_OUT, other=0.0)[None, :]
    where = p.to(tl.int64)[:, None] * C_OUT + co[None, :]
    tl.store(out_ptr + where, acc.to(tl.float16), mask=(p < PIXELS)[:, None] & (co < C_OUT)[None, :])


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C_OUT, C_IN, 3, 3] weights as the kernel reads them: [9, C_IN, C_OUT padded] fp16."""
    c_out, c_in = weight.shape[:2]
    packed = weight.new_zeros((9, c_in, _block_out(c_out)), dtype=torch.float16)
    packed[:, :, :c_out] = weight.detach().permute(2, 3, 1, 0).reshape(9, c_in, c_out)
    return packed


def _block_out(c_out: int) -> int:
    return max(MIN_DOT, triton.next_power_of_2(c_out))


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> int:
    """The number of output channels, once the inputs are known to fit."""
    if x.dim() != 4 or x.dtype != torch.float16:
        raise ValueError(f"conv3x3_narrow takes a 4-d float16 input, not {x.dtype} of shape {tuple(x.shape)}")
    if weight.dim() != 3 or weight.shape[:2] != (9, x.shape[1]) or weight.dtype != torch.float16:
        raise ValueError(f"weight {tuple(weight.shape)} {weight.dtype} is not pack_weight's for {x.shape[1]} input channels")
    if bias.dim() != 1 or _block_out(bias.shape[0]) != weight.shape[2] or bias.dtype != torch.float32:
        raise ValueError(f"bias {tuple(bias.shape)} {bias.dtype} is not float32 of the weight's output channels")
    return bias.shape[0]


def _empty_output(x: torch.Tensor, c_out: int) -> torch.Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, c_out, h, w), dtype=torch.float16, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("ddpm_triton::conv3x3_narrow", mutates_args=())
def conv3x3_narrow(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv2d(x, w, bias, padding=1) of float16 x, returned channels_last: weight from `pack_weight(w)`,
    bias float32 [C_OUT]. Meant for few channels on one side (the output's are all in one tile)."""
    c_out = _check(x, weight, bias)
    x = x.contiguous(memory_format=torch.channels_last)
    out = _empty_output(x, c_out)
    n, c_in, h, w = x.shape
    block_in = min(MAX_BLOCK_IN, max(MIN_DOT, triton.next_power_of_2(c_in)))
    _conv3x3_narrow_kernel[(triton.cdiv(n * h * w, BLOCK_PIXELS),)](
        x, weight, bias, out, n * h * w, h, w, c_in, c_out,
        BLOCK_P=BLOCK_PIXELS, BLOCK_IN=block_in, BLOCK_OUT=weight.shape[2], num_warps=8 if weight.shape[2] >= 128 else 4,
    )  # fmt: skip
    return out


@conv3x3_narrow.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _empty_output(x, _check(x, weight, bias))
