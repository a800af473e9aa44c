"""`conv3x3_fp8` on the H100: a warp-specialized, persistent Gluon kernel.

One loader warp streams each (tap, channel chunk) step's input box and weight tile through a ring
of shared-memory stages, signalled by mbarriers, while the default partition issues asynchronous
FP8 wgmma and runs the epilogue; the grid is persistent, so the loader fills the next tile's stages
during the epilogue. A 1x1 skip projection's fp16 steps follow the FP8 ones through the same
ring: an fp16 step of 64 channels is as many bytes as an FP8 step of 128. Measured on the H100 at
the CIFAR-10 U-Net's batch-256 shapes, against `conv3x3`'s Triton TMA kernel (benchmarks/README.md):
- warp specialization and persistence alone: -5%;
- the output stored as 16-byte runs of channels, converted from the wgmma layout through shared
  memory (stored straight from that layout, every thread writes 4-byte pieces): a further -10%;
- 256-pixel tiles, whose weight tiles serve twice the pixels: a further -5% where images are 8x8 or
  larger. At 4x4 a batch has too few such tiles, and 64-pixel tiles with two programs per SM run.
All 44 convolutions of a U-Net call: 3.33 -> 2.79 ms. A residual is read where it costs least
(`Tiling.early_residual`): before the main loop at 64-pixel tiles, in the epilogue at 256-pixel
tiles, where holding it across the loop had made the kernel slower than the Triton one (125 against
114 us at 32x32, 128->128) and reading it late makes it faster (104 us).

Gluon kernels do not run under Triton's interpreter, so on a machine without a GPU the tests
compile this one for sm_90 (`launch_plan` is what they compile) and the Triton kernels compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
from torch import Tensor
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

LOADER_REGISTERS = gl.constexpr(40)  # the loader warp only computes coordinates


@gluon.jit
def _load(
    x_desc, w_desc, skip_desc, skip2_desc, skip_w_desc, a_bufs, b_bufs, ready, empty,
    num_tiles, tiles_n, blocks_per_image, C_IN, chunks, C_SKIP, C_SKIP2,
    SKIPS: gl.constexpr, IMAGES: gl.constexpr, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
    STAGES: gl.constexpr,
):  # fmt: skip
    """The loader warp: each step's input box (the copy engine zero-fills the image's halo) and
    weight tile, then the skip projection's fp16 tiles through the same ring."""
    step_bytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    i = 0
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m = tile // tiles_n
        n0 = (pid_m // blocks_per_image) * IMAGES
        h0 = (pid_m % blocks_per_image) * ROWS
        co0 = (tile % tiles_n) * BLOCK_N
        for step in range(9 * chunks):
            tap = step // chunks
            c0 = (step - tap * chunks) * BLOCK_K
            stage = i % STAGES
            mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)  # a fresh barrier passes phase 1
            bar = ready.index(stage)
            mbarrier.expect(bar, step_bytes)
            tma.async_copy_global_to_shared(x_desc, [n0, h0 + tap // 3 - 1, tap % 3 - 1, c0], bar, a_bufs.index(stage))
            # Channels past C_IN read the next tap's weights, against input channels that are zeros.
            tma.async_copy_global_to_shared(w_desc, [co0, tap * C_IN + c0], bar, b_bufs.index(stage))
            i += 1
        if SKIPS >= 1:
            i = _load_skip_part(skip_desc, skip_w_desc, a_bufs, b_bufs, ready, empty, i, n0, h0, co0, 0, C_SKIP, STAGES)
        if SKIPS == 2:
            i = _load_skip_part(skip2_desc, skip_w_desc, a_bufs, b_bufs, ready, empty, i, n0, h0, co0, C_SKIP, C_SKIP2, STAGES)


@gluon.jit
def _load_skip_part(desc, skip_w_desc, a_bufs, b_bufs, ready, empty, i, n0, h0, co0, k0, C, STAGES: gl.constexpr):
    """One channel part of the 1x1 skip projection's input, with its weights from column k0 on. An
    fp16 step of SKIP_K channels is as many bytes as an FP8 step of 2 * SKIP_K, so the ring's stages
    hold it reinterpreted. Channels past C read zeros, so the next part's weights they meet add nothing."""
    SKIP_K: gl.constexpr = desc.block_type.shape[3]
    step_bytes: gl.constexpr = desc.block_type.nbytes + skip_w_desc.block_type.nbytes
    for c0 in range(0, C, SKIP_K):
        stage = i % STAGES
        mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
        bar = ready.index(stage)
        mbarrier.expect(bar, step_bytes)
        a = a_bufs.index(stage)._reinterpret(gl.float16, desc.block_type.shape, desc.layout)
        b = b_bufs.index(stage)._reinterpret(gl.float16, skip_w_desc.block_type.shape, skip_w_desc.layout)
        tma.async_copy_global_to_shared(desc, [n0, h0, 0, c0], bar, a)
        tma.async_copy_global_to_shared(skip_w_desc, [co0, k0 + c0], bar, b)
        i += 1
    return i


@gluon.jit
def _mma_steps(acc, a_bufs, b_bufs, ready, empty, i, steps, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, K: gl.constexpr, DTYPE: gl.constexpr):
    """acc + the products of the ring's next `steps` stages, each [BLOCK_M, K] x [BLOCK_N, K] in DTYPE
    (FP8 steps, or the skip projection's fp16 ones reinterpreted); returns (acc, i)."""
    a_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, K], DTYPE)
    b_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, K], DTYPE)
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    # The wgmma instruction's K is 32 bytes of the operands' type; the accumulator's registers are
    # the same whatever it is, so the conversions below move nothing.
    layout: gl.constexpr = acc.type.layout
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=layout.warps_per_cta, instr_shape=[16, BLOCK_N, 256 // DTYPE.primitive_bitwidth])
    acc = gl.convert_layout(acc, mma_layout)
    for step in range(steps):
        stage = i % STAGES
        mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
        a = a_bufs.index(stage)._reinterpret(DTYPE, [BLOCK_M, K], a_layout)  # the box as [pixels, K]
        b = b_bufs.index(stage)._reinterpret(DTYPE, [BLOCK_N, K], b_layout)
        acc = warpgroup_mma(a, b.permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        # The previous step's wgmma has finished reading its stage: the loader may refill it.
        mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1, pred=step > 0)
        i += 1
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1, pred=steps > 0)
    return gl.convert_layout(acc, layout), i


@gluon.jit
def _store_offsets(pixel, co, N_PIX, C_OUT):
    """Offsets and mask of an NHWC tile's elements, from its pixel and channel indices."""
    return pixel.to(gl.int64)[:, None] * C_OUT + co[None, :], (pixel < N_PIX)[:, None] & (co < C_OUT)[None, :]


@gluon.jit
def _compute(
    a_bufs, b_bufs, ready, empty, w_scale_ptr, bias_ptr, row_ptr, res_ptr, out_ptr, stats_ptr,
    num_tiles, tiles_n, blocks_per_image, chunks, N_IMAGES, HW, C_OUT, C_SKIP, C_SKIP2,
    HAS_ROW: gl.constexpr, HAS_RESIDUAL: gl.constexpr, EARLY_RESIDUAL: gl.constexpr, SKIPS: gl.constexpr,
    SKIP_K: gl.constexpr, STATS: gl.constexpr, IMAGES: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    BLOCK_K: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    """The default partition: wgmma over the ring, then `conv3x3._epilogue`'s sums. A residual is read
    before the main loop into the accumulator's layout (EARLY_RESIDUAL), or after it in the store
    layout, where each thread reads 16-byte runs and nothing is held across the loop."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32])
    # 16-byte runs of channels per thread for the global stores.
    store_layout: gl.constexpr = gl.BlockedLayout([1, 8], [256 // BLOCK_N, BLOCK_N // 8], [num_warps, 1], [1, 0])
    PIXELS: gl.constexpr = BLOCK_M // IMAGES  # of each image in a tile
    i = 0
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m = tile // tiles_n
        co = (tile % tiles_n) * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, acc_layout))
        local = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, acc_layout))
        n_mask = co < C_OUT
        pixel = (pid_m * BLOCK_M + local).to(gl.int64)
        mask = (pixel < N_IMAGES * HW)[:, None] & n_mask[None, :]
        if HAS_RESIDUAL and EARLY_RESIDUAL:
            # Loaded before the main loop, whose wgmma hides the read.
            residual = gl.load(res_ptr + pixel[:, None] * C_OUT + co[None, :], mask=mask, other=0.0)

        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, acc_layout)
        acc, i = _mma_steps(acc, a_bufs, b_bufs, ready, empty, i, 9 * chunks, BLOCK_M, BLOCK_N, BLOCK_K, gl.float8e4nv)
        # The store layout's offsets are built where they are used: held across the epilogue's sums,
        # their registers made a first convolution at 32x32 (128->128) take 103.5 instead of 87 us
        # on the H100 (benchmarks/README.md).
        pixel_s = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, store_layout))
        co_s = (tile % tiles_n) * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, store_layout))
        if HAS_RESIDUAL and not EARLY_RESIDUAL:
            where_r, mask_r = _store_offsets(pixel_s, co_s, N_IMAGES * HW, C_OUT)
            late_residual = gl.load(res_ptr + where_r, mask=mask_r, other=0.0)  # in flight during the epilogue's sums
        acc = acc * gl.load(w_scale_ptr + co, mask=n_mask, other=0.0)[None, :]
        if SKIPS >= 1:
            acc, i = _mma_steps(acc, a_bufs, b_bufs, ready, empty, i, gl.cdiv(C_SKIP, SKIP_K), BLOCK_M, BLOCK_N, SKIP_K, gl.float16)
        if SKIPS == 2:
            acc, i = _mma_steps(acc, a_bufs, b_bufs, ready, empty, i, gl.cdiv(C_SKIP2, SKIP_K), BLOCK_M, BLOCK_N, SKIP_K, gl.float16)
        acc += gl.load(bias_ptr + co, mask=n_mask, other=0.0)[None, :]
        if HAS_ROW:
            sample = pixel // HW
            acc += gl.load(row_ptr + sample[:, None] * C_OUT + co[None, :], mask=mask, other=0.0).to(gl.float32)
        if HAS_RESIDUAL and EARLY_RESIDUAL:
            acc += residual.to(gl.float32)
        out = acc.to(gl.float16)
        if STATS:
            # Each image's share of the tile, per channel: the mean of the stored values and their
            # squared deviations from it, which the next GroupNorm combines (`group_norm`).
            values = out.to(gl.float32)
            for image in gl.static_range(IMAGES):
                mine = (local // PIXELS == image)[:, None]
                mean = gl.sum(gl.where(mine, values, 0.0), axis=0) / PIXELS
                deviation = gl.where(mine, values - mean[None, :], 0.0)
                m2 = gl.sum(deviation * deviation, axis=0)
                n = (pid_m // blocks_per_image) * IMAGES + image
                where = ((n.to(gl.int64) * blocks_per_image + pid_m % blocks_per_image) * 2) * C_OUT + co
                stats_mask = n_mask & (n < N_IMAGES)
                gl.store(stats_ptr + where, mean, mask=stats_mask)
                gl.store(stats_ptr + where + C_OUT, m2, mask=stats_mask)
        out = gl.convert_layout(out, store_layout)
        if HAS_RESIDUAL and not EARLY_RESIDUAL:
            # The sum is rounded to fp16 before the residual is added: one more rounding than early.
            out = (out.to(gl.float32) + late_residual.to(gl.float32)).to(gl.float16)
        where_s, mask_s = _store_offsets(pixel_s, co_s, N_IMAGES * HW, C_OUT)
        gl.store(out_ptr + where_s, out, mask=mask_s)


@gluon.jit
def _conv3x3_fp8_ws_kernel(
    x_desc,  # [N, H, W, C_IN] float8_e4m3fn, boxes [IMAGES, ROWS, W, BLOCK_K]
    w_desc,  # [C_OUT, 9 * C_IN] float8_e4m3fn, boxes [BLOCK_N, BLOCK_K]
    skip_desc, skip2_desc,  # [N, H, W, C_SKIP(2)] fp16, boxes [IMAGES, ROWS, W, SKIP_K] (SKIPS >= 1, 2)
    skip_w_desc,  # [C_OUT, C_SKIP + C_SKIP2] fp16, boxes [BLOCK_N, SKIP_K] (SKIPS >= 1)
    w_scale_ptr, bias_ptr, row_ptr, res_ptr, out_ptr, stats_ptr,  # as in conv3x3._conv3x3_fp8_tma_kernel
    num_tiles, tiles_n, blocks_per_image, C_IN, chunks, N_IMAGES, HW, C_OUT, C_SKIP, C_SKIP2,
    HAS_ROW: gl.constexpr, HAS_RESIDUAL: gl.constexpr, EARLY_RESIDUAL: gl.constexpr, SKIPS: gl.constexpr,
    STATS: gl.constexpr, IMAGES: gl.constexpr, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
    STAGES: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    BLOCK_M: gl.constexpr = IMAGES * ROWS * x_desc.block_type.shape[2]
    SKIP_K: gl.constexpr = BLOCK_K // 2  # an fp16 step's bytes are an FP8 step's
    a_bufs = gl.allocate_shared_memory(gl.float8e4nv, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    b_bufs = gl.allocate_shared_memory(gl.float8e4nv, [STAGES] + w_desc.block_type.shape, w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for stage in gl.static_range(STAGES):
        mbarrier.init(ready.index(stage), count=1)
        mbarrier.init(empty.index(stage), count=1)
    gl.warp_specialize([
        (_compute, (a_bufs, b_bufs, ready, empty, w_scale_ptr, bias_ptr, row_ptr, res_ptr, out_ptr, stats_ptr, num_tiles,
                    tiles_n, blocks_per_image, chunks, N_IMAGES, HW, C_OUT, C_SKIP, C_SKIP2, HAS_ROW, HAS_RESIDUAL,
                    EARLY_RESIDUAL, SKIPS, SKIP_K, STATS, IMAGES, BLOCK_M, BLOCK_N, BLOCK_K, num_warps)),
        (_load, (x_desc, w_desc, skip_desc, skip2_desc, skip_w_desc, a_bufs, b_bufs, ready, empty, num_tiles, tiles_n,
                 blocks_per_image, C_IN, chunks, C_SKIP, C_SKIP2, SKIPS, IMAGES, ROWS, BLOCK_N, BLOCK_K, STAGES)),
    ], [1], [LOADER_REGISTERS])  # fmt: skip


@dataclass(frozen=True)
class Tiling:
    """How the kernel covers one convolution: measured on the H100 (the module docstring)."""

    block_m: int  # pixels per tile: whole rows of whole images
    programs_per_sm: int
    num_warps: int  # of the default partition
    maxnreg: int | None  # per-thread registers, bounded so that two programs fit on an SM
    # Whether a residual is read into registers before the main loop, whose wgmma hides the read
    # (4x4, 256->256: 8.6 us against the Triton kernel's 11.4), rather than in the epilogue, which
    # holds nothing across the loop (32x32, 128->128: 104 against 114 us; 16x16 and 8x8, 256->256:
    # 77 against 89 and 20 against 23 us; the early read measured 125 us at 32x32).
    early_residual: bool

    @staticmethod
    def for_image(h: int, w: int) -> Tiling:
        if h * w <= 16:
            return Tiling(block_m=64, programs_per_sm=2, num_warps=4, maxnreg=128, early_residual=True)
        return Tiling(block_m=256, programs_per_sm=1, num_warps=8, maxnreg=None, early_residual=False)


# Three 48 KB stages (256-pixel tiles), with the store conversion's 64 KB, fit an SM's 227 KB.
STAGES = 3


def statistics_block(h: int, w: int) -> int:
    """Pixels per statistics block of this kernel's output (a tile's share of one image)."""
    return min(h * w, Tiling.for_image(h, w).block_m)


def takes(block_k: int, skip_channels: list[int]) -> bool:
    """Whether the package runs this convolution here rather than in `conv3x3`'s Triton kernels, with
    `conv3x3._blocks`' K chunk. The fp16 skip steps borrow the ring's FP8 stages, so with a skip
    projection the chunk must be the full 128 channels."""
    return block_k == 128 or not skip_channels


def launch_plan(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residual: Tensor | None,
    skips: list[Tensor], skip_weight: Tensor | None, out: Tensor, stats: Tensor | None, blocks: tuple[int, int], sms: int,
) -> tuple[tuple[int], tuple[Any, ...], dict[str, Any]]:  # fmt: skip
    """(grid, arguments, keyword arguments) of the kernel's launch, for operands as `conv3x3._launch`
    lays them out (channels_last, fp32 scale and bias), the fp16 output and the statistics (or None) to
    write, and `conv3x3._blocks`' (BLOCK_N, BLOCK_K)."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    tiling = Tiling.for_image(h, w)
    block_n, block_k = blocks
    images, rows = max(1, tiling.block_m // (h * w)), min(h, tiling.block_m // w)

    def descriptor(tensor: Tensor, box: list[int], dtype: Any) -> TensorDescriptor:
        return TensorDescriptor.from_tensor(tensor, box, gl.NVMMASharedLayout.get_default_for(box, dtype))

    x_desc = descriptor(x.permute(0, 2, 3, 1), [images, rows, w, block_k], gl.float8e4nv)
    w_desc = descriptor(weight, [block_n, block_k], gl.float8e4nv)
    skip_descs = [descriptor(part.permute(0, 2, 3, 1), [images, rows, w, block_k // 2], gl.float16) for part in skips]
    skip_w_desc = w_desc if skip_weight is None else descriptor(skip_weight, [block_n, block_k // 2], gl.float16)
    skip_channels = [part.shape[1] for part in skips] + [0, 0]
    tiles_n = triton.cdiv(c_out, block_n)
    num_tiles = triton.cdiv(n * h * w, tiling.block_m) * tiles_n
    arguments = (
        x_desc, w_desc, *(skip_descs + [x_desc, x_desc])[:2], skip_w_desc,  # the kernel reads only SKIPS of them
        scale, bias, out if row is None else row, out if residual is None else residual, out, out if stats is None else stats,
        num_tiles, tiles_n, h // rows, c_in, triton.cdiv(c_in, block_k), n, h * w, c_out, *skip_channels[:2],
    )  # fmt: skip
    options = {"HAS_ROW": row is not None, "HAS_RESIDUAL": residual is not None, "EARLY_RESIDUAL": tiling.early_residual, "SKIPS": len(skips),
               "STATS": stats is not None, "IMAGES": images, "ROWS": rows, "BLOCK_N": block_n, "BLOCK_K": block_k,
               "STAGES": STAGES, "num_warps": tiling.num_warps, "maxnreg": tiling.maxnreg}  # fmt: skip
    return (min(num_tiles, tiling.programs_per_sm * sms),), arguments, options


def conv3x3_fp8_ws(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor, row: Tensor | None, residual: Tensor | None,
    skips: list[Tensor], skip_weight: Tensor | None, out: Tensor, stats: Tensor | None, blocks: tuple[int, int],
) -> None:  # fmt: skip
    """Writes `conv3x3.conv3x3_fp8`'s result into `out` (and its statistics into `stats`), with
    arguments as `conv3x3._launch` checked and laid out; see `takes` for what it accepts."""
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    grid, arguments, options = launch_plan(x, weight, scale, bias, row, residual, skips, skip_weight, out, stats, blocks, sms)
    _conv3x3_fp8_ws_kernel[grid](*arguments, **options)
