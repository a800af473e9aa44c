"""A 3x3, stride-1, padding-1 convolution of FP8 activations and FP8 weights, as an implicit GEMM.

The GEMM is [pixels, 9 * C_in] x [9 * C_in, C_out]: each K step loads one tap's channel chunk of the
shifted input rows (zeros outside the image) and one chunk of the weights packed tap-major, and
multiplies them in FP8 with fp32 accumulation. The epilogue does what would otherwise be separate
elementwise passes over the fp16 output: the per-channel weight scales, the bias, a per-sample
channel vector (the ResBlock's time embedding) and a residual tensor.

A ResBlock whose skip connection is a 1x1 convolution adds it in the same accumulator: after the
3x3 taps, more K steps multiply the block's fp16 input (in one or two channel parts, where a
decoder block's input is its features and the encoder's skip connection) by the fp16 1x1 weights.
Run as separate matmuls, the projection's output was written and read back by the epilogue.

Two Triton kernels share that epilogue. On Hopper the input tiles come through tensor descriptors:
a pixel block is whole image rows, so each tap's tile is one box of the NHWC tensor, and the copy
engine zero-fills the halo that address arithmetic and masks built in the pointer kernel. At the
CIFAR-10 U-Net's batch-256 shapes that measured 10-30% faster (benchmarks/README.md). The pointer
kernel serves Ada and image sizes that are not powers of two; on an H100 it ran at 1.84-2.32x
cuDNN's fp16 convolution (benchmarks/conv_kernels.py, whose prototype it comes from). On an H100
all 44 of the CIFAR-10 U-Net's convolutions run a third kernel, warp-specialized in Gluon
(`conv3x3_hopper`), 8-35% faster than the TMA kernel. Block sizes are fixed rather than autotuned,
because a tuner would benchmark inside the first request.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from . import conv3x3_hopper
from .quantize import quantize_rows


@triton.jit
def _epilogue(acc, pixel, co, N_PIX, HW, C_OUT, bias_ptr, row_ptr, res_ptr, out_ptr, HAS_ROW: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """out[pixel, co] = acc + bias [+ row of the pixel's sample] [+ residual], stored as fp16; returns
    the stored values. acc is already in output units (the weight scales applied)."""
    m_mask = pixel < N_PIX
    n_mask = co < C_OUT
    pixel64 = pixel.to(tl.int64)
    acc += tl.load(bias_ptr + co, mask=n_mask, other=0.0)[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_ROW:
        sample = pixel64 // HW
        acc += tl.load(row_ptr + sample[:, None] * C_OUT + co[None, :], mask=out_mask, other=0.0).to(tl.float32)
    where = pixel64[:, None] * C_OUT + co[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(res_ptr + where, mask=out_mask, other=0.0).to(tl.float32)
    out = acc.to(tl.float16)
    tl.store(out_ptr + where, out, mask=out_mask)
    return out.to(tl.float32)


@triton.jit
def _projection(acc, x_ptr, w_ptr, pixel64, m_mask, co, n_mask, k0, C, W_STRIDE, BLOCK_K: tl.constexpr):
    """acc + x[pixel, :C] @ w[co, k0:k0 + C].T, both fp16: one part of the skip connection's 1x1 convolution."""
    k = tl.arange(0, BLOCK_K)
    for c0 in range(0, C, BLOCK_K):
        c = c0 + k
        a = tl.load(x_ptr + pixel64[:, None] * C + c[None, :], mask=m_mask[:, None] & (c < C)[None, :], other=0.0)
        b = tl.load(w_ptr + co[None, :].to(tl.int64) * W_STRIDE + (k0 + c)[:, None], mask=(c < C)[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _tma_projection(acc, x_desc, w_desc, n0, h0, co0, k0, C, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """`_projection` through tensor descriptors. Channels past C read zeros from x (the copy engine's
    fill), so what they meet in w, the next part's weights, adds nothing."""
    for c0 in range(0, C, BLOCK_K):
        a = x_desc.load([n0, h0, 0, c0]).reshape(BLOCK_M, BLOCK_K)
        b = w_desc.load([co0, k0 + c0])
        acc = tl.dot(a, b.T, acc)
    return acc


@triton.jit
def _conv3x3_fp8_kernel(
    x_ptr,  # [N, H, W, C_IN] float8_e4m3fn
    w_ptr,  # [C_OUT, 9 * C_IN] float8_e4m3fn, k = tap * C_IN + c_in
    w_scale_ptr,  # [C_OUT] fp32
    bias_ptr,  # [C_OUT] fp32
    row_ptr,  # [N, C_OUT] fp16, added to every pixel of sample n (HAS_ROW)
    res_ptr,  # [N, H, W, C_OUT] fp16 (HAS_RESIDUAL)
    skip_ptr,  # [N, H, W, C_SKIP] fp16: the 1x1 projection's input (SKIPS >= 1)
    skip2_ptr,  # [N, H, W, C_SKIP2] fp16: its second channel part (SKIPS == 2)
    skip_w_ptr,  # [C_OUT, C_SKIP + C_SKIP2] fp16 (SKIPS >= 1)
    out_ptr,  # [N, H, W, C_OUT] fp16
    N_PIX,
    H,
    W,
    C_IN,
    C_OUT,
    C_SKIP,
    C_SKIP2,
    HAS_ROW: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SKIPS: tl.constexpr,
    SKIP_K: tl.constexpr,
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
    if SKIPS >= 1:
        acc = _projection(acc, skip_ptr, skip_w_ptr, pixel64, m_mask, co, n_mask, 0, C_SKIP, C_SKIP + C_SKIP2, SKIP_K)
    if SKIPS == 2:
        acc = _projection(acc, skip2_ptr, skip_w_ptr, pixel64, m_mask, co, n_mask, C_SKIP, C_SKIP2, C_SKIP + C_SKIP2, SKIP_K)
    _epilogue(acc, pixel, co, N_PIX, H * W, C_OUT, bias_ptr, row_ptr, res_ptr, out_ptr, HAS_ROW, HAS_RESIDUAL)


@triton.jit
def _conv3x3_fp8_tma_kernel(
    x_desc,  # [N, H, W, C_IN] float8_e4m3fn, blocks [IMAGES, ROWS, W, BLOCK_K]
    w_desc,  # [C_OUT, 9 * C_IN] float8_e4m3fn, blocks [BLOCK_N, BLOCK_K]
    skip_desc,  # [N, H, W, C_SKIP] fp16, blocks [IMAGES, ROWS, W, SKIP_K] (SKIPS >= 1)
    skip2_desc,  # [N, H, W, C_SKIP2] fp16, the same blocks (SKIPS == 2)
    skip_w_desc,  # [C_OUT, C_SKIP + C_SKIP2] fp16, blocks [BLOCK_N, SKIP_K] (SKIPS >= 1)
    w_scale_ptr, bias_ptr, row_ptr, res_ptr, out_ptr,  # as in _conv3x3_fp8_kernel
    stats_ptr,  # [N, H // ROWS, 2, C_OUT] fp32: each block's per-channel mean and squared deviations (STATS)
    N_PIX,
    H,
    W: tl.constexpr,
    C_IN,
    C_OUT,
    C_SKIP,
    C_SKIP2,
    HAS_ROW: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SKIPS: tl.constexpr,
    SKIP_K: tl.constexpr,
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
    acc *= tl.load(w_scale_ptr + co, mask=co < C_OUT, other=0.0)[None, :]
    if SKIPS >= 1:
        acc = _tma_projection(acc, skip_desc, skip_w_desc, n0, h0, co0, 0, C_SKIP, BLOCK_M, SKIP_K)
    if SKIPS == 2:
        acc = _tma_projection(acc, skip2_desc, skip_w_desc, n0, h0, co0, C_SKIP, C_SKIP2, BLOCK_M, SKIP_K)
    out = _epilogue(acc, pixel, co, N_PIX, H * W, C_OUT, bias_ptr, row_ptr, res_ptr, out_ptr, HAS_ROW, HAS_RESIDUAL)
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
    fp32 scales (`quantize_rows`)."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"pack_weight takes [C_out, C_in, 3, 3] weights, not {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    return quantize_rows(weight.detach().permute(0, 2, 3, 1).reshape(c_out, 9 * c_in))


def _blocks(c_in: int, c_out: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) of all three kernels: 128 x 128 where the channels allow; FP8 tensor-core
    dots take K >= 32."""
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


def _check(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, residual: Tensor | None, skip_inputs: list[Tensor], skip_weight: Tensor | None
) -> None:  # fmt: skip
    if x.dim() != 4 or x.dtype != torch.float8_e4m3fn:
        raise ValueError(f"conv3x3_fp8 takes a 4-d float8_e4m3fn input, not {x.dtype} of shape {tuple(x.shape)}")
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    if weight.dtype != torch.float8_e4m3fn or weight.shape != (c_out, 9 * c_in):
        raise ValueError(f"weight {weight.dtype} {tuple(weight.shape)} is not pack_weight()'s for {c_in} input channels")
    if scale.shape != (c_out,) or bias.shape != (c_out,):
        raise ValueError(f"scale {tuple(scale.shape)} and bias {tuple(bias.shape)} must both be [{c_out}]")
    if residual is not None and residual.shape != (n, c_out, h, w):
        raise ValueError(f"the residual {tuple(residual.shape)} is not the output's shape {(n, c_out, h, w)}")
    if len(skip_inputs) > 2 or (skip_weight is None) != (not skip_inputs):
        raise ValueError(f"the skip projection takes 1 or 2 input parts and its weight together, not {len(skip_inputs)} parts and {skip_weight is not None}")
    for part in skip_inputs:
        if part.dim() != 4 or part.dtype != torch.float16 or (part.shape[0], *part.shape[2:]) != (n, h, w):
            raise ValueError(f"a skip input must be float16 [{n}, C, {h}, {w}], not {part.dtype} of shape {tuple(part.shape)}")
    channels = sum(part.shape[1] for part in skip_inputs)
    if skip_weight is not None and (skip_weight.dtype != torch.float16 or skip_weight.shape != (c_out, channels)):
        raise ValueError(f"the skip weight must be float16 [{c_out}, {channels}], not {skip_weight.dtype} {tuple(skip_weight.shape)}")


def _empty_output(x: Tensor, c_out: int) -> Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, c_out, h, w), dtype=torch.float16, device=x.device, memory_format=torch.channels_last)


def _warp_specialized(x: Tensor) -> bool:
    """Whether `conv3x3_hopper`'s kernel may run x's convolution: where TMA applies on an sm_90 GPU
    (wgmma is Hopper's alone)."""
    return x.is_cuda and _tma_pixel_block(x) is not None and torch.cuda.get_device_capability(x.device) == (9, 0)


def fused_statistics(x: Tensor) -> bool:
    """Whether `conv3x3_fp8_stats` takes this input: its statistics come from the TMA kernels only."""
    return _tma_pixel_block(x) is not None


def _statistics_block(x: Tensor, warp_specialized: bool) -> int:
    """Pixels per statistics block (one per pixel tile of the kernel that runs) of x's convolution."""
    _, _, h, w = x.shape
    block_m = _tma_pixel_block(x)
    if block_m is None:
        raise ValueError(f"conv3x3_fp8_stats needs the TMA kernel (Hopper, power-of-two images), not {tuple(x.shape)}")
    return conv3x3_hopper.statistics_block(h, w) if warp_specialized and _warp_specialized(x) else min(h * w, block_m)


def _empty_statistics(x: Tensor, c_out: int, warp_specialized: bool = True) -> Tensor:
    n, _, h, w = x.shape
    blocks = h * w // _statistics_block(x, warp_specialized)
    return torch.empty((n, blocks, 2, c_out), dtype=torch.float32, device=x.device)


def _launch(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residual: Tensor | None,
    skip_inputs: list[Tensor], skip_weight: Tensor | None, with_statistics: bool = False,
    tma: bool = True, warp_specialized: bool = True,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """The ops' shared body: the output, and its statistics when asked for. On an H100,
    `conv3x3_hopper`'s kernel runs what it takes (`conv3x3_hopper.takes`). For
    benchmarks/conv3x3_speed.py, `warp_specialized=False` runs the Triton TMA kernel there instead,
    and `tma=False` the pointer kernel wherever TMA applies."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    x = x.contiguous(memory_format=torch.channels_last)
    out = _empty_output(x, c_out)
    if residual is not None:
        residual = residual.to(torch.float16).contiguous(memory_format=torch.channels_last)
    if row is not None:
        row = row.to(torch.float16).contiguous()
    skips = [part.contiguous(memory_format=torch.channels_last) for part in skip_inputs]
    skip_weight = None if skip_weight is None else skip_weight.contiguous()
    skip_channels = [part.shape[1] for part in skips] + [0, 0]
    skip_k = min(64, max(16, triton.next_power_of_2(max(skip_channels))))  # fp16 dots take K >= 16
    stats = _empty_statistics(x, c_out, tma and warp_specialized) if with_statistics else None
    aligned = all(c % 8 == 0 for c in skip_channels)  # tensor-memory copies need 16-byte rows: fp16 skip inputs, 8 channels
    block_n, block_k = _blocks(c_in, c_out)
    gluon = tma and warp_specialized and aligned and _warp_specialized(x)
    if gluon and conv3x3_hopper.takes(block_k, skip_channels[: len(skips)]):
        conv3x3_hopper.conv3x3_fp8_ws(x, weight, scale.float(), bias.float(), row, residual, skips, skip_weight, out, stats, (block_n, block_k))
        return out, stats
    tail = (scale.float(), bias.float(), out if row is None else row, out if residual is None else residual)
    sizes = (n * h * w, h, w, c_in, c_out, *skip_channels[:2])
    flags = {"HAS_ROW": row is not None, "HAS_RESIDUAL": residual is not None, "SKIPS": len(skips), "SKIP_K": skip_k,
             "BLOCK_N": block_n, "BLOCK_K": block_k}  # fmt: skip
    block_m = _tma_pixel_block(x) if tma and aligned else None
    if block_m is None:
        parts = (skips + [out, out])[:2]
        skip_w = out if skip_weight is None else skip_weight
        grid = (triton.cdiv(n * h * w, 128) * triton.cdiv(c_out, block_n),)
        _conv3x3_fp8_kernel[grid](
            x, weight, *tail, *parts, skip_w, out, *sizes, **flags, EVEN_K=c_in % block_k == 0, BLOCK_M=128, num_warps=4, num_stages=3
        )  # fmt: skip
        return out, None
    images, rows = max(1, block_m // (h * w)), min(h, block_m // w)
    x_desc = TensorDescriptor.from_tensor(x.permute(0, 2, 3, 1), [images, rows, w, block_k])
    w_desc = TensorDescriptor.from_tensor(weight, [block_n, block_k])
    skip_descs = [TensorDescriptor.from_tensor(part.permute(0, 2, 3, 1), [images, rows, w, skip_k]) for part in skips]
    skip_descs = (skip_descs + [x_desc, x_desc])[:2]  # the kernel reads only the first SKIPS of them
    skip_w_desc = w_desc if skip_weight is None else TensorDescriptor.from_tensor(skip_weight, [block_n, skip_k])
    grid = (triton.cdiv(n * h * w, block_m) * triton.cdiv(c_out, block_n),)
    stages = 4 if block_m < 128 else 3  # measured on the H100 (benchmarks/README.md)
    _conv3x3_fp8_tma_kernel[grid](
        x_desc, w_desc, *skip_descs, skip_w_desc, *tail, out, out if stats is None else stats, *sizes, **flags,
        IMAGES=images, ROWS=rows, STATS=stats is not None, num_warps=4, num_stages=stages,
    )  # fmt: skip
    return out, stats


@torch.library.custom_op("ddpm_triton::conv3x3_fp8", mutates_args=())
def conv3x3_fp8(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residual: Tensor | None,
    skip_inputs: list[Tensor], skip_weight: Tensor | None,
) -> Tensor:  # fmt: skip
    """conv2d(x, weight * scale, bias, padding=1) [+ row[:, :, None, None]] [+ residual]
    [+ conv2d(cat(skip_inputs, 1), skip_weight[:, :, None, None])], float16 channels_last.

    x: FP8 [N, C_in, H, W] (channels_last memory, unscaled); weight, scale: from `pack_weight`; bias
    fp32 [C_out]; row: fp16 [N, C_out] or None; residual: fp16 [N, C_out, H, W] or None;
    skip_inputs: zero to two fp16 [N, C_i, H, W], the channel parts of a 1x1 convolution's input;
    skip_weight: its fp16 [C_out, sum of C_i] weights (None without skip inputs).
    """
    _check(x, weight, scale, bias, residual, skip_inputs, skip_weight)
    return _launch(x, weight, scale, bias, row, residual, skip_inputs, skip_weight)[0]


@conv3x3_fp8.register_fake
def _(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residual: Tensor | None,
    skip_inputs: list[Tensor], skip_weight: Tensor | None,
) -> Tensor:  # fmt: skip
    _check(x, weight, scale, bias, residual, skip_inputs, skip_weight)
    return _empty_output(x, weight.shape[0])


@torch.library.custom_op("ddpm_triton::conv3x3_fp8_stats", mutates_args=())
def conv3x3_fp8_stats(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None) -> tuple[Tensor, Tensor]:
    """`conv3x3_fp8` with neither residual nor skip projection, and the output's statistics for
    `group_norm`: fp32 [N, blocks per image, 2, C_out], each pixel block's per-channel mean and sum of
    squared deviations from it. Where `fused_statistics(x)` is false it raises ValueError."""
    _check(x, weight, scale, bias, None, [], None)
    out, stats = _launch(x, weight, scale, bias, row, None, [], None, with_statistics=True)
    assert stats is not None  # _empty_statistics raises where no TMA kernel computes them
    return out, stats


@conv3x3_fp8_stats.register_fake
def _(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None) -> tuple[Tensor, Tensor]:
    _check(x, weight, scale, bias, None, [], None)
    return _empty_output(x, weight.shape[0]), _empty_statistics(x, weight.shape[0])
