"""A 3x3, stride-1, padding-1 convolution of FP8 activations and FP8 weights, as an implicit GEMM.

The GEMM is [pixels, 9 * C_in] x [9 * C_in, C_out]: each K step loads one tap's channel chunk of the
shifted input rows (zeros outside the image) and one chunk of the weights packed tap-major, and
multiplies them in FP8 with fp32 accumulation. The epilogue does what would otherwise be separate
elementwise passes over the fp16 output: the per-channel weight scales, the bias, a per-sample
channel vector (the ResBlock's time embedding) and a residual tensor.

On an H100 this loop ran at 1.84-2.32x cuDNN's fp16 convolution at the CIFAR-10 U-Net's shapes
(benchmarks/conv_kernels.py, whose prototype it comes from). Block sizes are fixed rather than
autotuned: the winners there were the same at every shape, and a tuner would benchmark inside the
first request.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor
import triton.language as tl

FP8_MAX = 448.0


@triton.jit
def _conv3x3_fp8_kernel(
    x_ptr,  # [N, H, W, C_IN] float8_e4m3fn
    w_ptr,  # [C_OUT, 9 * C_IN] float8_e4m3fn, k = tap * C_IN + c_in
    w_scale_ptr,  # [C_OUT] fp32
    bias_ptr,  # [C_OUT] fp32
    row_ptr,  # [N, C_OUT] fp16, added to every pixel of sample n (HAS_ROW)
    res_ptr,  # [N, H, W, C_OUT] fp16 (HAS_RES)
    out_ptr,  # [N, H, W, C_OUT] fp16
    N_PIX,
    H,
    W,
    C_IN,
    C_OUT,
    HAS_ROW: tl.constexpr,
    HAS_RES: tl.constexpr,
    EVEN_K: tl.constexpr,  # C_IN % BLOCK_K == 0: no channel mask in the loop
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # The output-channel blocks of one pixel block are neighbours in launch order: they share the
    # input tile through L2.
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(C_OUT, BLOCK_N)
    pid_m = pid // blocks_n
    pid_n = pid % blocks_n

    pixel = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    m_mask = pixel < N_PIX
    n_mask = co < C_OUT
    oh = (pixel % (H * W)) // W
    ow = pixel % W
    pixel64 = pixel.to(tl.int64)

    chunks = tl.cdiv(C_IN, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel chunk): the software pipeliner only overlaps the innermost
    # loop, which a nested 9-tap loop would leave a few iterations long.
    for step in range(0, 9 * chunks):
        tap = step // chunks
        ci = (step - tap * chunks) * BLOCK_K + k
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        inside = m_mask & (oh + dy >= 0) & (oh + dy < H) & (ow + dx >= 0) & (ow + dx < W)
        if EVEN_K:
            k_mask = k < BLOCK_K  # all true: folded away
        else:
            k_mask = ci < C_IN
        source = pixel64 + dy * W + dx  # the same image's neighbouring pixel
        a = tl.load(x_ptr + source[:, None] * C_IN + ci[None, :], mask=inside[:, None] & k_mask[None, :], other=0.0)
        b_ptrs = w_ptr + co[None, :].to(tl.int64) * (9 * C_IN) + (tap * C_IN + ci)[:, None]
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc)

    acc *= tl.load(w_scale_ptr + co, mask=n_mask, other=0.0)[None, :]
    acc += tl.load(bias_ptr + co, mask=n_mask, other=0.0)[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_ROW:
        sample = pixel64 // (H * W)
        acc += tl.load(row_ptr + sample[:, None] * C_OUT + co[None, :], mask=out_mask, other=0.0).to(tl.float32)
    where = pixel64[:, None] * C_OUT + co[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + where, mask=out_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + where, acc.to(tl.float16), mask=out_mask)


def pack_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[C_out, C_in, 3, 3] weights as the kernel's FP8 [C_out, 9 * C_in] (tap-major) and per-output-channel
    fp32 scales (each channel's largest magnitude maps to 448)."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"pack_weight takes [C_out, C_in, 3, 3] weights, not {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    packed = weight.detach().float().permute(0, 2, 3, 1).reshape(c_out, 9 * c_in)
    scale = packed.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / FP8_MAX
    return (packed / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous(), scale.contiguous()


def _blocks(c_in: int, c_out: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): 128 x 128 x 128 where the channels allow; FP8 tensor-core dots take K >= 32."""
    block_n = min(128, max(16, triton.next_power_of_2(c_out)))
    block_k = min(128, max(32, triton.next_power_of_2(c_in)))
    return 128, block_n, block_k


def _check(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dim() != 4 or x.dtype != torch.float8_e4m3fn:
        raise ValueError(f"conv3x3_fp8 takes a 4-d float8_e4m3fn input, not {x.dtype} of shape {tuple(x.shape)}")
    c_out = weight.shape[0]
    if weight.dtype != torch.float8_e4m3fn or weight.shape != (c_out, 9 * x.shape[1]):
        raise ValueError(f"weight {weight.dtype} {tuple(weight.shape)} is not pack_weight()'s for {x.shape[1]} input channels")
    if scale.shape != (c_out,) or bias.shape != (c_out,):
        raise ValueError(f"scale {tuple(scale.shape)} and bias {tuple(bias.shape)} must both be [{c_out}]")


def _empty_output(x: Tensor, c_out: int) -> Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, c_out, h, w), dtype=torch.float16, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("ddpm_triton::conv3x3_fp8", mutates_args=())
def conv3x3_fp8(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residual: Tensor | None) -> Tensor:
    """conv2d(x, weight * scale, bias, padding=1) [+ row[:, :, None, None]] [+ residual], float16 channels_last.

    x: FP8 [N, C_in, H, W] (channels_last memory, unscaled); weight, scale: from `pack_weight`; bias
    fp32 [C_out]; row: fp16 [N, C_out] or None; residual: fp16 [N, C_out, H, W] or None.
    """
    _check(x, weight, scale, bias)
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    x = x.contiguous(memory_format=torch.channels_last)
    out = _empty_output(x, c_out)
    if residual is not None:
        residual = residual.to(torch.float16).contiguous(memory_format=torch.channels_last)
    if row is not None:
        row = row.to(torch.float16).contiguous()
    block_m, block_n, block_k = _blocks(c_in, c_out)
    grid = (triton.cdiv(n * h * w, block_m) * triton.cdiv(c_out, block_n),)
    _conv3x3_fp8_kernel[grid](
        x, weight, scale.float(), bias.float(), out if row is None else row, out if residual is None else residual, out,
        n * h * w, h, w, c_in, c_out,
        HAS_ROW=row is not None, HAS_RES=residual is not None, EVEN_K=c_in % block_k == 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=3,
    )  # fmt: skip
    return out


@conv3x3_fp8.register_fake
def _(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residual: Tensor | None) -> Tensor:
    _check(x, weight, scale, bias)
    return _empty_output(x, weight.shape[0])
