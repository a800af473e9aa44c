"""group_norm(x) [then SiLU] over channels_last memory, written as fp16 or as FP8 for the next convolution.

PyTorch's GroupNorm views a channels_last tensor as NCHW, so Inductor's fused kernels read or write
it transposed (they are named `..._clone_...` in a profile). Here one program owns whole groups of
one image and walks its pixels row by row, so every load and store is a contiguous run of channels.
It reads its slice twice (statistics, then the normalisation) and writes it once, or once when the
producing convolution computed the statistics in its epilogue (`conv3x3.conv3x3_fp8_stats`). On an H100 at
batch 256, CUDA-graphed, it moves 1.35-1.6 TB/s counting one read and the write, 2.5-6.8x faster
than Inductor's compiled GroupNorm+SiLU of the same channels_last tensor (benchmarks/README.md).
The second read mostly hits L2, since it follows the first within the program: a persistent grid
sized to keep the slices there measured no faster, and a separate statistics kernel with both
passes spread over runs of pixels measured slower at every shape.

The input may come in two parts, `x` and a `tail` whose channels follow x's: the U-Net's decoder
normalises the concatenation of its features and a skip connection, and reading both where they
lie saves writing and re-reading the concatenation.

The FP8 output has no scale: silu(group_norm(x)) is about unit-sized by construction, far inside
e4m3's range (+-448, normal down to 2^-6), so a per-tensor scale would cost a reduction and buy
nothing. Values are clamped to the finite range before the cast.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0  # the largest finite float8_e4m3fn
_FP8_MAX = tl.constexpr(FP8_MAX)  # the same, readable inside kernels
CHANNELS_PER_PROGRAM = 64  # 128-byte fp16 runs: whole cache lines (a program takes a multiple of it)
ELEMENTS_PER_STEP = 4096  # pixels x channels one program loads per loop step


@triton.jit
def _load_rows(x_ptr, tail_ptr, n, rows, channel, mask, HW, C_HEAD, C_TAIL, HAS_TAIL: tl.constexpr):
    """x[n, rows, channel] as fp32, channels from C_HEAD on read from the tail (0 where masked)."""
    if HAS_TAIL:
        head = channel < C_HEAD
        image_x = n.to(tl.int64) * HW * C_HEAD
        image_t = n.to(tl.int64) * HW * C_TAIL
        x = tl.load(x_ptr + image_x + rows[:, None] * C_HEAD + channel[None, :], mask=mask & head[None, :], other=0.0)
        t = tl.load(
            tail_ptr + image_t + rows[:, None] * C_TAIL + (channel - C_HEAD)[None, :],
            mask=mask & (~head)[None, :], other=0.0,
        )  # fmt: skip
        return x.to(tl.float32) + t.to(tl.float32)
    image = n.to(tl.int64) * HW * C_HEAD
    return tl.load(x_ptr + image + rows[:, None] * C_HEAD + channel[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _group_norm_kernel(
    x_ptr,  # [N, HW, C_HEAD] fp16: an NCHW tensor in channels_last memory
    tail_ptr,  # [N, HW, C_TAIL] fp16: channels C_HEAD.. of the input (HAS_TAIL)
    weight_ptr,  # [C] fp32
    bias_ptr,  # [C] fp32
    out_ptr,  # [N, HW, C] fp16 or float8_e4m3fn, C = C_HEAD + C_TAIL
    stats_ptr,  # [N, BLOCKS, 2, C] fp32: per-block channel means and squared deviations (HAS_STATS)
    BLOCKS,
    HW,
    C_HEAD,
    C_TAIL,
    eps,
    CPG: tl.constexpr,  # channels per group
    GROUPS_PER_PROGRAM: tl.constexpr,
    GROUPS_P2: tl.constexpr,  # GROUPS_PER_PROGRAM rounded up to a power of two
    BLOCK_C: tl.constexpr,  # GROUPS_PER_PROGRAM * CPG rounded up to a power of two
    BLOCK_R: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    HAS_STATS: tl.constexpr,
    SILU: tl.constexpr,
    FP8_OUT: tl.constexpr,
):
    n = tl.program_id(0)
    C = C_HEAD + C_TAIL
    lane = tl.arange(0, BLOCK_C)
    channel = tl.program_id(1) * GROUPS_PER_PROGRAM * CPG + lane
    c_mask = (lane < GROUPS_PER_PROGRAM * CPG) & (channel < C)

    if HAS_STATS:
        # The producing convolution's per-block statistics, combined (equal-sized blocks): the input
        # is read once, by the normalisation below.
        stats = stats_ptr + n.to(tl.int64) * BLOCKS * 2 * C + channel
        mean_c = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for b in range(0, BLOCKS):
            mean_c += tl.load(stats + b * 2 * C, mask=c_mask, other=0.0)
        mean_c = mean_c / BLOCKS
        m2_c = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for b in range(0, BLOCKS):
            d = tl.load(stats + b * 2 * C, mask=c_mask, other=0.0) - mean_c
            m2_c += tl.load(stats + b * 2 * C + C, mask=c_mask, other=0.0) + (HW // BLOCKS) * d * d
    else:
        # Per-channel sums of deviations from the channel's first pixel: shifted sums keep the
        # variance exact in fp32 when a channel's mean is large against its spread.
        first = tl.arange(0, 1)
        shift = tl.sum(_load_rows(x_ptr, tail_ptr, n, first, channel, c_mask[None, :], HW, C_HEAD, C_TAIL, HAS_TAIL), axis=0)
        s1 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        s2 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        for r0 in range(0, HW, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            mask = (rows < HW)[:, None] & c_mask[None, :]
            x = _load_rows(x_ptr, tail_ptr, n, rows, channel, mask, HW, C_HEAD, C_TAIL, HAS_TAIL)
            d = tl.where(mask, x - shift[None, :], 0.0)
            s1 += d
            s2 += d * d
        sum1 = tl.sum(s1, axis=0)
        mean_c = shift + sum1 / HW
        m2_c = tl.maximum(tl.sum(s2, axis=0) - sum1 * sum1 / HW, 0.0)  # squared deviations from mean_c

    # Channels -> groups (Chan et al.'s parallel variance), and back, through a one-hot
    # [groups, channels] matrix: any channels-per-group, not only powers of two.
    group = tl.arange(0, GROUPS_P2)
    onehot = ((lane[None, :] // CPG) == group[:, None]) & c_mask[None, :]
    mean_g = tl.sum(tl.where(onehot, mean_c[None, :], 0.0), axis=1) / CPG
    mean_gc = tl.sum(tl.where(onehot, mean_g[:, None], 0.0), axis=0)
    spread = m2_c + HW * (mean_c - mean_gc) * (mean_c - mean_gc)
    var_g = tl.sum(tl.where(onehot, spread[None, :], 0.0), axis=1) / (CPG * HW)
    rstd_gc = tl.sum(tl.where(onehot, tl.rsqrt(var_g + eps)[:, None], 0.0), axis=0)

    scale = rstd_gc * tl.load(weight_ptr + channel, mask=c_mask, other=0.0)
    offset = tl.load(bias_ptr + channel, mask=c_mask, other=0.0) - mean_gc * scale
    image = n.to(tl.int64) * HW * C
    for r0 in range(0, HW, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < HW)[:, None] & c_mask[None, :]
        x = _load_rows(x_ptr, tail_ptr, n, rows, channel, mask, HW, C_HEAD, C_TAIL, HAS_TAIL)
        y = x * scale[None, :] + offset[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        where = image + rows[:, None] * C + channel[None, :]
        if FP8_OUT:
            tl.store(out_ptr + where, tl.clamp(y, -_FP8_MAX, _FP8_MAX).to(tl.float8e4nv), mask=mask)
        else:
            tl.store(out_ptr + where, y.to(tl.float16), mask=mask)


def _check(x: torch.Tensor, tail: torch.Tensor | None, weight: torch.Tensor, groups: int, stats: torch.Tensor | None) -> int:
    """The number of channels normalised (x's and the tail's), once the inputs are known to fit."""
    for name, part in (("x", x), ("tail", tail)):
        if part is not None and (part.dim() != 4 or part.dtype != torch.float16):
            raise ValueError(f"group_norm takes 4-d float16 tensors; {name} is {part.dtype} of shape {tuple(part.shape)}")
    if tail is not None and (tail.shape[0], *tail.shape[2:]) != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"the tail {tuple(tail.shape)} is not a channel continuation of x {tuple(x.shape)}")
    if stats is not None and (
        tail is not None or stats.dim() != 4 or (stats.shape[0], *stats.shape[2:]) != (x.shape[0], 2, x.shape[1])
        or (x.shape[2] * x.shape[3]) % stats.shape[1] or stats.dtype != torch.float32
    ):  # fmt: skip
        raise ValueError(f"stats {tuple(stats.shape)} are not conv3x3_fp8_stats' for x {tuple(x.shape)} (and no tail)")
    channels = x.shape[1] + (0 if tail is None else tail.shape[1])
    if channels % groups or weight.shape != (channels,):
        raise ValueError(f"{channels} channels do not split into {groups} groups with {weight.shape[0]} weights")
    return channels


def _groups_per_program(groups: int, channels_per_group: int) -> int:
    """The fewest whole groups whose channels are whole 128-byte fp16 runs (all of them if none are).

    Runs that start and end on line boundaries are what make the kernel fast: 12-channel groups
    (the 384-channel concatenation) measured 416 us per 256x32x32 tensor in runs of 5 groups (60
    channels), 260 in runs of 8 and 233 in runs of 16 (192 channels), on the H100.
    """
    for count in range(1, groups + 1):
        if count * channels_per_group % CHANNELS_PER_PROGRAM == 0:
            return count
    return groups


def _empty_output(x: torch.Tensor, channels: int, fp8_out: bool) -> torch.Tensor:
    n, _, h, w = x.shape
    dtype = torch.float8_e4m3fn if fp8_out else torch.float16
    return torch.empty((n, channels, h, w), dtype=dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("ddpm_triton::group_norm", mutates_args=())
def group_norm(
    x: torch.Tensor, tail: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
    groups: int, eps: float, silu: bool, fp8_out: bool, stats: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """group_norm(cat([x, tail], 1), groups, weight, bias, eps), then SiLU when `silu`, of float16
    inputs; returned channels_last, in float8_e4m3fn when `fp8_out` (unscaled) else float16.
    tail may be None; weight and bias are float32. stats: x's statistics from `conv3x3_fp8_stats`,
    or None to compute them here."""
    channels = _check(x, tail, weight, groups, stats)
    x = x.contiguous(memory_format=torch.channels_last)
    if tail is not None:
        tail = tail.contiguous(memory_format=torch.channels_last)
    out = _empty_output(x, channels, fp8_out)
    n, c_head, h, w = x.shape
    cpg = channels // groups
    per_program = _groups_per_program(groups, cpg)
    block_c = triton.next_power_of_2(per_program * cpg)
    step = ELEMENTS_PER_STEP if h * w >= 1024 else ELEMENTS_PER_STEP // 2  # measured on the H100 (benchmarks/README.md)
    _group_norm_kernel[(n, triton.cdiv(groups, per_program))](
        x, x if tail is None else tail, weight.float().contiguous(), bias.float().contiguous(), out,
        x if stats is None else stats, 1 if stats is None else stats.shape[1], h * w, c_head, channels - c_head, eps,
        CPG=cpg, GROUPS_PER_PROGRAM=per_program, GROUPS_P2=triton.next_power_of_2(per_program),
        BLOCK_C=block_c, BLOCK_R=max(1, step // block_c),
        HAS_TAIL=tail is not None, HAS_STATS=stats is not None, SILU=silu, FP8_OUT=fp8_out, num_warps=4,
    )  # fmt: skip
    return out


@group_norm.register_fake
def _(
    x: torch.Tensor, tail: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
    groups: int, eps: float, silu: bool, fp8_out: bool, stats: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    return _empty_output(x, _check(x, tail, weight, groups, stats), fp8_out)
