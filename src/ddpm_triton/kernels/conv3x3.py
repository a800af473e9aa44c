"""A 3x3, stride-1, padding-1 convolution of FP8 activations and FP8 weights, as an implicit GEMM.

The GEMM is [pixels, 9 * C_in] x [9 * C_in, C_out]: each K step loads one tap's channel chunk of the
shifted input rows (zeros outside the image) and one chunk of the weights packed tap-major, and
multiplies them in FP8 with fp32 accumulation. The epilogue does what would otherwise be separate
elementwise passes over the fp16 output: the per-channel weight scales, the bias, a per-sample
channel vector (the ResBlock's time embedding) and up to two residual tensors.

Two kernels share that epilogue. On Hopper the input tiles come through tensor descriptors: a
pixel block is whole image rows, so each tap's tile is one box of the NHWC tensor, and the copy
engine zero-fills the halo that address arithmetic and masks built in the pointer kernel. At the
CIFAR-10 U-Net's batch-256 shapes that measured 10-30% faster (benchmarks/README.md). The pointer
kernel serves Ada and image sizes that are not powers of two; on an H100 it ran at 1.84-2.32x
cuDNN's fp16 convolution (benchmarks/conv_kernels.py, whose prototype it comes from). Block sizes
are fixed rather than autotuned, because a tuner would benchmark inside the first request.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

FP8_MAX = 448.0


@triton.jit
def _epilogue(acc, pixel, co, N_PIX, HW, C_OUT, w_scale_ptr, bias_ptr, row_ptr, res_ptr, res2_ptr, out_ptr,
              HAS_ROW: tl.constexpr, RESIDUALS: tl.constexpr):  # fmt: skip
    """out[pixel, co] = acc * scale + bias [+ row of the pixel's sample] [+ residuals], stored as fp16;
    returns the stored values."""
    m_mask = pixel < N_PIX
    n_mask = co < C_OUT
    pixel64 = pixel.to(tl.int64)
    acc *= tl.load(w_scale_ptr + co, mask=n_mask, other=0.0)[None, :]
    acc += tl.load(bias_ptr + co, mask=n_mask, other=0.0)[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_ROW:
        sample = pixel64 // HW
        acc += tl.load(row_ptr + sample[:, None] * C_OUT + co[None, :], mask=out_mask, other=0.0).to(tl.float32)
    where = pixel64[:, None] * C_OUT + co[None, :]
    if RESIDUALS >= 1:
        acc += tl.load(res_ptr + where, mask=out_mask, other=0.0).to(tl.float32)
    if RESIDUALS >= 2:
        acc += tl.load(res2_ptr + where, mask=out_mask, other=0.0).to(tl.float32)
    out = acc.to(tl.float16)
    tl.store(out_ptr + where, out, mask=out_mask)
    return out.to(tl.float32)


@triton.jit
def _conv3x3_fp8_kernel(
    x_ptr,  # [N, H, W, C_IN] float8_e4m3fn
    w_ptr,  # [C_OUT, 9 * C_IN] float8_e4m3fn, k = tap * C_IN + c_in
    w_scale_ptr,  # [C_OUT] fp32
    bias_ptr,  # [C_OUT] fp32
    row_ptr,  # [N, C_OUT] fp16, added to every pixel of sample n (HAS_ROW)
    res_ptr,  # [N, H, W, C_OUT] fp16 (RESIDUALS >= 1)
    res2_ptr,  # [N, H, W, C_OUT] fp16 (RESIDUALS == 2)
    out_ptr,  # [N, H, W, C_OUT] fp16
    N_PIX,
    H,
    W,
    C_IN,
    C_OUT,
    HAS_ROW: tl.constexpr,
    RESIDUALS: tl.constexpr,
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
    _epilogue(acc, pixel, co, N_PIX, H * W, C_OUT, w_scale_ptr, bias_ptr, row_ptr, res_ptr, res2_ptr, out_ptr, HAS_ROW, RESIDUALS)


@triton.jit
def _conv3x3_fp8_tma_kernel(
    x_desc,  # [N, H, W, C_IN] float8_e4m3fn, blocks [IMAGES, ROWS, W, BLOCK_K]
    w_desc,  # [C_OUT, 9 * C_IN] float8_e4m3fn, blocks [BLOCK_N, BLOCK_K]
    w_scale_ptr, bias_ptr, row_ptr, res_ptr, res2_ptr, out_ptr,  # as in _conv3x3_fp8_kernel
    stats_ptr,  # [N, H // ROWS, 2, C_OUT] fp32: each block's per-channel mean and squared deviations (STATS)
    N_PIX,
    H,
    W: tl.constexpr,
    C_IN,
    C_OUT,
    HAS_ROW: tl.constexpr,
    RESIDUALS: tl.constexpr,
    IMAGES: tl.constexpr,  # whole images per pixel block (1 when a block is part of an image)
    ROWS: tl.constexpr,  # image rows per pixel block
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STATS: tl.constexpr,
):  # fmt: skip
    # A pixel block is whole rows of whole images, so each tap's input tile is one box of the
    # NHWC tensor shifted by (dy, dx); the copy engine fills what falls outside the image with zeros.
    BLOCK_M: tl.constexpr = IMAGES * ROWS * W
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(C_OUT, BLOCK_N)
    pid_m = pid // blocks_n
    pid_n = pid % blocks_n
    blocks_per_image = H // ROWS
    n0 = (pid_m // blocks_per_image) * IMAGES
    h0 = (pid_m % blocks_per_image) * ROWS
    co0 = pid_n * BLOCK_N

    chunks = tl.cdiv(C_IN, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, 9 * chunks):
        tap = step // chunks
        c0 = (step - tap * chunks) * BLOCK_K
        a = x_desc.load([n0, h0 + tap // 3 - 1, tap % 3 - 1, c0]).reshape(BLOCK_M, BLOCK_K)
        # Channels past C_IN read the next tap's weights, against input channels that are zeros.
        b = w_desc.load([co0, tap * C_IN + c0])
        acc = tl.dot(a, b.T, acc)
    pixel = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    co = co0 + tl.arange(0, BLOCK_N)
    out = _epilogue(acc, pixel, co, N_PIX, H * W, C_OUT, w_scale_ptr, bias_ptr, row_ptr, res_ptr, res2_ptr, out_ptr, HAS_ROW, RESIDUALS)
    if STATS:
        # Each image's share of the block, per channel: the mean and the squared deviations from it,
        # which the next GroupNorm combines (Chan et al.) instead of reading the output once more.
        PIXELS: tl.constexpr = ROWS * W
        per_image = tl.reshape(out, (IMAGES, PIXELS, BLOCK_N))
        mean = tl.sum(per_image, axis=1) / PIXELS
        deviation = per_image - mean[:, None, :]
        m2 = tl.sum(deviation * deviation, axis=1)
        image = n0 + tl.arange(0, IMAGES)
        where = ((image.to(tl.int64) * blocks_per_image + pid_m % blocks_per_image) * 2)[:, None] * C_OUT + co[None, :]
        mask = (image < N_PIX // (H * W))[:, None] & (co < C_OUT)[None, :]
        tl.store(stats_ptr + where, mean, mask=mask)
        tl.store(stats_ptr + where + C_OUT, m2, mask=mask)


def pack_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[C_out, C_in, 3, 3] weights as the kernel's FP8 [C_out, 9 * C_in] (tap-major) and per-output-channel
    fp32 scales (each channel's largest magnitude maps to 448)."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"pack_weight takes [C_out, C_in, 3, 3] weights, not {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    packed = weight.detach().float().permute(0, 2, 3, 1).reshape(c_out, 9 * c_in)
    scale = packed.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / FP8_MAX
    return (packed / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous(), scale.contiguous()


def _blocks(c_in: int, c_out: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): 128 x 128 where the channels allow; FP8 tensor-core dots take K >= 32."""
    return min(128, max(16, triton.next_power_of_2(c_out))), min(128, max(32, triton.next_power_of_2(c_in)))


def _tma_pixel_block(x: Tensor) -> int | None:
    """The TMA kernel's pixels per block for x, or None where it does not apply.

    Tensor-memory copies need Hopper (sm_90) and 16-byte-aligned rows, and the kernel's boxes are
    whole rows of whole images, in powers of two. Elsewhere (Ada, MNIST's 7x7 levels) the pointer
    kernel runs. Triton's interpreter, which runs the tests on a CPU, emulates the copies.
    """
    _, c_in, h, w = x.shape
    hopper = not x.is_cuda or torch.cuda.get_device_capability(x.device) >= (9, 0)
    block_m = 64 if h * w <= 16 else 128  # 4x4 images: 128-pixel blocks leave most SMs idle (benchmarks/README.md)
    powers_of_two = h & (h - 1) == 0 and w & (w - 1) == 0
    return block_m if hopper and powers_of_two and c_in % 16 == 0 and w <= block_m else None


def _check(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, residuals: list[Tensor]) -> None:
    if x.dim() != 4 or x.dtype != torch.float8_e4m3fn:
        raise ValueError(f"conv3x3_fp8 takes a 4-d float8_e4m3fn input, not {x.dtype} of shape {tuple(x.shape)}")
    c_out = weight.shape[0]
    if weight.dtype != torch.float8_e4m3fn or weight.shape != (c_out, 9 * x.shape[1]):
        raise ValueError(f"weight {weight.dtype} {tuple(weight.shape)} is not pack_weight()'s for {x.shape[1]} input channels")
    if scale.shape != (c_out,) or bias.shape != (c_out,):
        raise ValueError(f"scale {tuple(scale.shape)} and bias {tuple(bias.shape)} must both be [{c_out}]")
    if len(residuals) > 2:
        raise ValueError(f"conv3x3_fp8 adds at most 2 residuals, not {len(residuals)}")


def _empty_output(x: Tensor, c_out: int) -> Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, c_out, h, w), dtype=torch.float16, device=x.device, memory_format=torch.channels_last)


def fused_statistics(x: Tensor) -> bool:
    """Whether `conv3x3_fp8_stats` takes this input: its statistics come from the TMA kernel only."""
    return _tma_pixel_block(x) is not None


def _empty_statistics(x: Tensor, c_out: int) -> Tensor:
    n, _, h, w = x.shape
    block_m = _tma_pixel_block(x)
    if block_m is None:
        raise ValueError(f"conv3x3_fp8_stats needs the TMA kernel (Hopper, power-of-two images), not {tuple(x.shape)}")
    return torch.empty((n, max(1, h * w // block_m), 2, c_out), dtype=torch.float32, device=x.device)


def _launch(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residuals: list[Tensor],
    stats: Tensor | None, tma: bool = True,
) -> Tensor:  # fmt: skip
    """The ops' shared body; `tma=False` runs the pointer kernel where TMA applies too (benchmarks/conv3x3_speed.py)."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    x = x.contiguous(memory_format=torch.channels_last)
    out = _empty_output(x, c_out)
    residuals = [r.to(torch.float16).contiguous(memory_format=torch.channels_last) for r in residuals]
    if row is not None:
        row = row.to(torch.float16).contiguous()
    block_n, block_k = _blocks(c_in, c_out)
    res, res2 = (residuals + [out, out])[:2]
    tail = (scale.float(), bias.float(), out if row is None else row, res, res2, out)
    sizes = (n * h * w, h, w, c_in, c_out)
    flags = {"HAS_ROW": row is not None, "RESIDUALS": len(residuals), "BLOCK_N": block_n, "BLOCK_K": block_k}
    block_m = _tma_pixel_block(x) if tma else None
    if block_m is None:
        grid = (triton.cdiv(n * h * w, 128) * triton.cdiv(c_out, block_n),)
        _conv3x3_fp8_kernel[grid](x, weight, *tail, *sizes, **flags, EVEN_K=c_in % block_k == 0, BLOCK_M=128, num_warps=4, num_stages=3)
        return out
    images, rows = max(1, block_m // (h * w)), min(h, block_m // w)
    x_desc = TensorDescriptor.from_tensor(x.permute(0, 2, 3, 1), [images, rows, w, block_k])
    w_desc = TensorDescriptor.from_tensor(weight, [block_n, block_k])
    grid = (triton.cdiv(n * h * w, block_m) * triton.cdiv(c_out, block_n),)
    stages = 4 if block_m < 128 else 3  # measured on the H100 (benchmarks/README.md)
    _conv3x3_fp8_tma_kernel[grid](
        x_desc, w_desc, *tail, out if stats is None else stats, *sizes, **flags,
        IMAGES=images, ROWS=rows, STATS=stats is not None, num_warps=4, num_stages=stages,
    )  # fmt: skip
    return out


@torch.library.custom_op("ddpm_triton::conv3x3_fp8", mutates_args=())
def conv3x3_fp8(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residuals: list[Tensor]) -> Tensor:
    """conv2d(x, weight * scale, bias, padding=1) [+ row[:, :, None, None]] [+ each residual], float16 channels_last.

    x: FP8 [N, C_in, H, W] (channels_last memory, unscaled); weight, scale: from `pack_weight`; bias
    fp32 [C_out]; row: fp16 [N, C_out] or None; residuals: up to two fp16 [N, C_out, H, W].
    """
    _check(x, weight, scale, bias, residuals)
    return _launch(x, weight, scale, bias, row, residuals, None)


@conv3x3_fp8.register_fake
def _(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residuals: list[Tensor]) -> Tensor:
    _check(x, weight, scale, bias, residuals)
    return _empty_output(x, weight.shape[0])


@torch.library.custom_op("ddpm_triton::conv3x3_fp8_stats", mutates_args=())
def conv3x3_fp8_stats(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residuals: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """`conv3x3_fp8`, and the output's statistics for `group_norm`: fp32 [N, blocks per image, 2, C_out],
    each pixel block's per-channel mean and sum of squared deviations from it. Where
    `fused_statistics(x)` is false it raises ValueError."""
    _check(x, weight, scale, bias, residuals)
    stats = _empty_statistics(x, weight.shape[0])
    return _launch(x, weight, scale, bias, row, residuals, stats), stats


@conv3x3_fp8_stats.register_fake
def _(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residuals: list[Tensor]) -> tuple[Tensor, Tensor]:
    _check(x, weight, scale, bias, residuals)
    return _empty_output(x, weight.shape[0]), _empty_statistics(x, weight.shape[0])
