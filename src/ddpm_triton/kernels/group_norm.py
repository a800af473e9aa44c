"""group_norm(x) [then SiLU] over channels_last memory, written as fp16 or as FP8 for the next convolution.

PyTorch's GroupNorm views a channels_last tensor as NCHW, so Inductor's fused kernels read or write
it transposed (they are named `..._clone_...` in a profile). Here every load and store is a
contiguous run of channels, by one of two kernels:

- Images of up to 256 pixels (the U-Net's 16x16 and smaller levels): a program holds a few groups
  of one image in registers, so it reads them once and computes exact two-pass statistics (the
  mean, then squared deviations from it) without going back to memory. On an H100 at batch 256,
  CUDA-graphed, that took a 256-channel GroupNorm+SiLU from 10.5 to 4.8 us at 4x4, 12.3 to 8.8 at
  8x8 and 32 to 28 at 16x16, and the CIFAR-10 U-Net's 51 GroupNorms from 1.87 to 1.69 ms per call
  (benchmarks/README.md).
- Larger images: a program owns whole groups of one image and walks its pixels row by row. It
  reads its slice twice (statistics, then the normalisation) and writes it once, or reads it once
  when the producing convolution computed the statistics in its epilogue
  (`conv3x3.conv3x3_fp8_stats`). At 32x32 it moves 1.35-1.75 TB/s counting one read and the write,
  2.5-6.8x faster than Inductor's compiled GroupNorm+SiLU of the same channels_last tensor. A
  persistent grid sized to keep the slices in L2 for the second read measured no faster, nor did a
  separate statistics kernel, nor splitting a program's pixels when the statistics come with the input.

The input may come in two parts, `x` and a `tail` whose channels follow x's: the U-Net's decoder
normalises the concatenation of its features and a skip connection, and reading both where they
lie saves writing and re-reading the concatenation. x may also come without a per-channel bias
that its producer left out (`head_bias`: the upsampling's, whose own pass over its output this saves).

The FP8 output has no scale: silu(group_norm(x)) is about unit-sized by construction, far inside
e4m3's range (+-448, normal down to 2^-6), so a per-tensor scale would cost a reduction and buy
nothing. Values are clamped to the finite range before the cast.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .quantize import FP8_MAX

_FP8_MAX = tl.constexpr(FP8_MAX)  # readable inside kernels
CHANNELS_PER_PROGRAM = 64  # 128-byte fp16 runs: whole cache lines (a program takes a multiple of it)
ELEMENTS_PER_STEP = 4096  # pixels x channels one program loads per loop step
SECTOR_CHANNELS = 16  # fp16 channels in a 32-byte memory sector
# Channels per program of the register-resident kernel, by pixels per image rounded up to a power of
# two (it takes images of up to 256 pixels). Measured on the H100 at batch 256 (benchmarks/README.md):
# narrow slices, so many small programs, won at 4x4 and 16x16, and 64 channels at 8x8.
RESIDENT_CHANNELS = {16: 32, 64: 64, 256: 32}
RESIDENT_MAX_PIXELS = 256
RESIDENT_MAX_ELEMENTS = 16384  # a larger slice (wide groups) would spill registers: it streams instead
ELEMENTS_PER_THREAD = 64  # the resident kernel's warps: about this many fp32 values per thread


@triton.jit
def _group_statistics(total_c, lane, c_mask, count, CPG: tl.constexpr, GROUPS_P2: tl.constexpr):
    """Per-channel sums [BLOCK_C] -> the sum over each channel's group, divided by `count`, broadcast
    back to its channels. A one-hot [groups, channels] matrix maps channels to groups and back: any
    channels-per-group, not only powers of two."""
    group = tl.arange(0, GROUPS_P2)
    onehot = ((lane[None, :] // CPG) == group[:, None]) & c_mask[None, :]
    per_group = tl.sum(tl.where(onehot, total_c[None, :], 0.0), axis=1) / count
    return tl.sum(tl.where(onehot, per_group[:, None], 0.0), axis=0)


@triton.jit
def _head_bias(head_bias_ptr, channel, c_mask, C_HEAD, HAS_HEAD_BIAS: tl.constexpr):
    """The bias to add to x's channels (0 on the tail's, or everywhere without HAS_HEAD_BIAS)."""
    if HAS_HEAD_BIAS:
        return tl.load(head_bias_ptr + channel, mask=c_mask & (channel < C_HEAD), other=0.0)
    return tl.zeros(channel.shape, dtype=tl.float32)


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
    head_bias_ptr,  # [C_HEAD] fp32: a bias of x's channels that its producer left out (HAS_HEAD_BIAS)
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
    HAS_HEAD_BIAS: tl.constexpr,
    HAS_STATS: tl.constexpr,
    SILU: tl.constexpr,
    FP8_OUT: tl.constexpr,
    STAGES: tl.constexpr,  # loop iterations whose loads are in flight at once (Triton's software pipelining)
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
        for r0 in tl.range(0, HW, BLOCK_R, num_stages=STAGES):
            rows = r0 + tl.arange(0, BLOCK_R)
            mask = (rows < HW)[:, None] & c_mask[None, :]
            x = _load_rows(x_ptr, tail_ptr, n, rows, channel, mask, HW, C_HEAD, C_TAIL, HAS_TAIL)
            d = tl.where(mask, x - shift[None, :], 0.0)
            s1 += d
            s2 += d * d
        sum1 = tl.sum(s1, axis=0)
        mean_c = shift + sum1 / HW
        m2_c = tl.maximum(tl.sum(s2, axis=0) - sum1 * sum1 / HW, 0.0)  # squared deviations from mean_c

    # A head bias shifts its channels' means and leaves their spreads as they are.
    head_bias = _head_bias(head_bias_ptr, channel, c_mask, C_HEAD, HAS_HEAD_BIAS)
    mean_c += head_bias
    # Channels -> groups: Chan et al.'s parallel variance over the channels' (mean, squared deviations).
    mean_gc = _group_statistics(mean_c, lane, c_mask, CPG, CPG, GROUPS_P2)
    spread = m2_c + HW * (mean_c - mean_gc) * (mean_c - mean_gc)
    var_gc = _group_statistics(spread, lane, c_mask, CPG * HW, CPG, GROUPS_P2)
    rstd_gc = tl.rsqrt(var_gc + eps)

    scale = rstd_gc * tl.load(weight_ptr + channel, mask=c_mask, other=0.0)
    offset = tl.load(bias_ptr + channel, mask=c_mask, other=0.0) - (mean_gc - head_bias) * scale  # x read without it
    image = n.to(tl.int64) * HW * C
    for r0 in tl.range(0, HW, BLOCK_R, num_stages=STAGES):
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


@triton.jit
def _group_norm_resident_kernel(
    x_ptr,  # [N, HW, C_HEAD] fp16
    tail_ptr,  # [N, HW, C_TAIL] fp16 (HAS_TAIL)
    head_bias_ptr,  # [C_HEAD] fp32 (HAS_HEAD_BIAS)
    weight_ptr,  # [C] fp32
    bias_ptr,  # [C] fp32
    out_ptr,  # [N, HW, C] fp16 or float8_e4m3fn
    HW,
    C_HEAD,
    C_TAIL,
    eps,
    CPG: tl.constexpr,
    GROUPS_PER_PROGRAM: tl.constexpr,
    GROUPS_P2: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,  # HW rounded up to a power of two
    HAS_TAIL: tl.constexpr,
    HAS_HEAD_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    FP8_OUT: tl.constexpr,
):
    """One image's GROUPS_PER_PROGRAM groups held in registers: one read, and exact two-pass
    statistics (the mean, then squared deviations from it) without going back to memory."""
    n = tl.program_id(0)
    C = C_HEAD + C_TAIL
    lane = tl.arange(0, BLOCK_C)
    channel = tl.program_id(1) * GROUPS_PER_PROGRAM * CPG + lane
    c_mask = (lane < GROUPS_PER_PROGRAM * CPG) & (channel < C)
    rows = tl.arange(0, BLOCK_HW)
    mask = (rows < HW)[:, None] & c_mask[None, :]
    x = _load_rows(x_ptr, tail_ptr, n, rows, channel, mask, HW, C_HEAD, C_TAIL, HAS_TAIL)

    head_bias = _head_bias(head_bias_ptr, channel, c_mask, C_HEAD, HAS_HEAD_BIAS)
    mean = _group_statistics(tl.sum(x, axis=0) + HW * head_bias, lane, c_mask, CPG * HW, CPG, GROUPS_P2)
    d = tl.where(mask, x - (mean - head_bias)[None, :], 0.0)
    var = _group_statistics(tl.sum(d * d, axis=0), lane, c_mask, CPG * HW, CPG, GROUPS_P2)
    scale = tl.rsqrt(var + eps) * tl.load(weight_ptr + channel, mask=c_mask, other=0.0)
    y = d * scale[None, :] + tl.load(bias_ptr + channel, mask=c_mask, other=0.0)[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    where = out_ptr + n.to(tl.int64) * HW * C + rows[:, None] * C + channel[None, :]
    if FP8_OUT:
        tl.store(where, tl.clamp(y, -_FP8_MAX, _FP8_MAX).to(tl.float8e4nv), mask=mask)
    else:
        tl.store(where, y.to(tl.float16), mask=mask)


def _check(
    x: torch.Tensor, tail: torch.Tensor | None, weight: torch.Tensor, groups: int, stats: torch.Tensor | None,
    head_bias: torch.Tensor | None,
) -> int:  # fmt: skip
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
    if head_bias is not None and (
        stats is not None or head_bias.shape != (x.shape[1],) or head_bias.dtype != torch.float32
    ):  # fmt: skip
        raise ValueError(
            f"head_bias must be float32 of x's {x.shape[1]} channels, without stats; "
            f"it is {head_bias.dtype} {tuple(head_bias.shape)}"
        )
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
    head_bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """group_norm(cat([x + head_bias, tail], 1), groups, weight, bias, eps), then SiLU when `silu`,
    of float16 inputs; returned channels_last, in float8_e4m3fn when `fp8_out` (unscaled) else
    float16. tail and head_bias (x's channels, float32: a bias its producer left out) may be None;
    weight and bias are float32. stats: x's statistics from `conv3x3_fp8_stats`, or None to compute
    them here."""
    channels = _check(x, tail, weight, groups, stats, head_bias)
    x = x.contiguous(memory_format=torch.channels_last)
    if tail is not None:
        tail = tail.contiguous(memory_format=torch.channels_last)
    out = _empty_output(x, channels, fp8_out)
    weight, bias = weight.float().contiguous(), bias.float().contiguous()
    resident = None if stats is not None else _resident_plan(x.shape[2] * x.shape[3], groups, channels // groups)
    inputs = (x, tail, head_bias, weight, bias, out, groups, eps, silu)
    if resident is not None:
        _launch_resident(*inputs, *resident)
    else:
        _launch_streaming(*inputs, stats)
    return out


def _resident_plan(hw: int, groups: int, channels_per_group: int) -> tuple[int, int] | None:
    """(groups per program, warps) of the register-resident kernel, or None above RESIDENT_MAX_PIXELS
    or RESIDENT_MAX_ELEMENTS.

    A program's channels are the fewest whole groups that reach RESIDENT_CHANNELS and end on a
    32-byte sector: 12-channel groups (the 384-channel concatenation) go 4 to a program.
    """
    block_hw = triton.next_power_of_2(hw)
    if block_hw > RESIDENT_MAX_PIXELS:
        return None
    target = RESIDENT_CHANNELS.get(block_hw, min(RESIDENT_CHANNELS.values()))
    widths = ((count, count * channels_per_group) for count in range(1, groups + 1))
    per_program = next((count for count, width in widths if width >= target and width % SECTOR_CHANNELS == 0), groups)
    elements = block_hw * triton.next_power_of_2(per_program * channels_per_group)
    if elements > RESIDENT_MAX_ELEMENTS:
        return None
    return per_program, max(2, elements // (32 * ELEMENTS_PER_THREAD))


def _launch_resident(
    x: torch.Tensor, tail: torch.Tensor | None, head_bias: torch.Tensor | None, weight: torch.Tensor,
    bias: torch.Tensor, out: torch.Tensor, groups: int, eps: float, silu: bool, per_program: int, num_warps: int,
) -> None:  # fmt: skip
    n, c_head, h, w = x.shape
    channels = out.shape[1]
    cpg = channels // groups
    _group_norm_resident_kernel[(n, triton.cdiv(groups, per_program))](
        x, x if tail is None else tail, weight if head_bias is None else head_bias, weight, bias, out,
        h * w, c_head, channels - c_head, eps,
        CPG=cpg, GROUPS_PER_PROGRAM=per_program, GROUPS_P2=triton.next_power_of_2(per_program),
        BLOCK_C=triton.next_power_of_2(per_program * cpg), BLOCK_HW=triton.next_power_of_2(h * w),
        HAS_TAIL=tail is not None, HAS_HEAD_BIAS=head_bias is not None, SILU=silu,
        FP8_OUT=out.dtype == torch.float8_e4m3fn, num_warps=num_warps,
    )  # fmt: skip


def _launch_streaming(
    x: torch.Tensor, tail: torch.Tensor | None, head_bias: torch.Tensor | None, weight: torch.Tensor,
    bias: torch.Tensor, out: torch.Tensor, groups: int, eps: float, silu: bool, stats: torch.Tensor | None,
) -> None:  # fmt: skip
    n, c_head, h, w = x.shape
    channels = out.shape[1]
    cpg = channels // groups
    per_program = _groups_per_program(groups, cpg)
    block_c = triton.next_power_of_2(per_program * cpg)
    step = ELEMENTS_PER_STEP if h * w >= 1024 else ELEMENTS_PER_STEP // 2  # measured on the H100 (benchmarks/README.md)
    stages, warps = _streaming_pipeline(stats is not None, out.dtype == torch.float16)
    _group_norm_kernel[(n, triton.cdiv(groups, per_program))](
        x, x if tail is None else tail, weight if head_bias is None else head_bias, weight, bias, out,
        x if stats is None else stats, 1 if stats is None else stats.shape[1], h * w, c_head, channels - c_head, eps,
        CPG=cpg, GROUPS_PER_PROGRAM=per_program, GROUPS_P2=triton.next_power_of_2(per_program),
        BLOCK_C=block_c, BLOCK_R=max(1, step // block_c),
        HAS_TAIL=tail is not None, HAS_HEAD_BIAS=head_bias is not None, HAS_STATS=stats is not None, SILU=silu,
        FP8_OUT=out.dtype == torch.float8_e4m3fn, STAGES=stages, num_warps=warps,
    )  # fmt: skip


def _streaming_pipeline(has_stats: bool, fp16_out: bool) -> tuple[int, int]:
    """(pipeline stages, warps) of the streaming kernel.

    Measured on the H100 at 32x32, batch 256, against one stage and 4 warps: with the statistics
    given, the one pass over the input went from 50.5 to 43.6 us at 128 channels with three stages;
    without, fp16 out (the output's norm) 89 -> 80 us with three stages and 8 warps. The FP8-out
    passes without statistics measured fastest as they were (69 us at 128 channels, 229 at the
    384-channel concatenation), among 1-3 stages, 4-8 warps and 32-64 channels per program
    (benchmarks/README.md).
    """
    if has_stats:
        return 3, 4
    return (3, 8) if fp16_out else (1, 4)


@group_norm.register_fake
def _(
    x: torch.Tensor, tail: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
    groups: int, eps: float, silu: bool, fp8_out: bool, stats: torch.Tensor | None,
    head_bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    return _empty_output(x, _check(x, tail, weight, groups, stats, head_bias), fp8_out)
