"""The Triton kernels (FP8 convolution, GroupNorm, attention's projection) against PyTorch's own ops, on random data.

With no GPU they run under Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported). The interpreter's float -> fp8 conversion rounds wrongly in Triton 3.5/3.6 (7.81 becomes
4.0, 500 becomes 256), unlike the GPU's cvt.rn.satfinite, so the fixture below routes that one
conversion through torch's float8_e4m3fn cast, which is what the GPU computes. The convolution's
Gluon kernel for the H100 (`conv3x3_hopper`) cannot run in the interpreter: without one it is
compiled for sm_90, and on one the convolution tests run it. Speed is measured in benchmarks/,
never here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

INTERPRET = not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

from ddpm_triton.kernels.conv3x3 import _statistics_block, _tma_pixel_block, conv3x3_fp8, conv3x3_fp8_stats, fused_statistics, pack_weight  # noqa: E402
from ddpm_triton.kernels.conv3x3_hopper import Tiling  # noqa: E402
from ddpm_triton.kernels.group_norm import FP8_MAX, group_norm  # noqa: E402
from ddpm_triton.kernels.linear import linear_residual  # noqa: E402
from ddpm_triton.kernels.quantize import quantize_rows, quantize_tensor  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")  # the interpreter's numpy


@pytest.fixture(autouse=True, scope="module")
def interpreter_fp8_rounding():
    if not INTERPRET:
        yield
        return
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    original = interpreter._convert_float

    def convert(values, input_dtype, output_dtype, rounding_mode):  # type: ignore[no-untyped-def]
        if output_dtype == tl.float8e4nv and input_dtype in (tl.float32, tl.float16):
            source = np.ascontiguousarray(values).view(np.float32 if input_dtype == tl.float32 else np.float16)
            rounded = torch.from_numpy(source.astype(np.float32)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return rounded.view(torch.uint8).numpy().reshape(values.shape)
        return original(values, input_dtype, output_dtype, rounding_mode)

    interpreter._convert_float = convert
    yield
    interpreter._convert_float = original


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def channels_last(*shape: int, generator: torch.Generator, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    x = torch.randn(*shape, generator=generator) * scale + offset
    return x.half().to(DEVICE).contiguous(memory_format=torch.channels_last)


def group_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, silu: bool = True) -> torch.Tensor:
    y = F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-5)
    return F.silu(y) if silu else y


@pytest.mark.parametrize(
    ("shape", "groups", "offset"),
    [
        ((2, 32, 8, 8), 8, 0.0),  # 4 channels per group, every group in one program
        ((2, 48, 6, 5), 4, 0.0),  # 12 channels per group (not a power of two), 30 pixels (not a block multiple)
        ((1, 384, 4, 4), 32, 0.0),  # the CIFAR-10 U-Net's widest concatenation: several programs per image
        ((2, 32, 8, 8), 8, 300.0),  # a mean far above the spread: the statistics stay exact
        ((1, 64, 20, 20), 16, 0.0),  # over 256 pixels: the streaming kernel, not the register-resident one
        ((1, 64, 20, 20), 16, 300.0),
    ],
)
def test_group_norm_silu_matches_pytorch(shape: tuple[int, int, int, int], groups: int, offset: float) -> None:
    g = torch.Generator().manual_seed(sum(shape) + groups)
    x = channels_last(*shape, generator=g, scale=1.5, offset=offset)
    weight = (torch.rand(shape[1], generator=g) + 0.5).to(DEVICE)
    bias = (torch.randn(shape[1], generator=g) * 0.2).to(DEVICE)
    expected = group_norm_reference(x, weight, bias, groups)

    out = group_norm(x, None, weight, bias, groups, 1e-5, True, False, None)
    assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, expected) < 2e-3

    fp8 = group_norm(x, None, weight, bias, groups, 1e-5, True, True, None)
    assert fp8.dtype == torch.float8_e4m3fn and fp8.is_contiguous(memory_format=torch.channels_last)
    # The fp8 values are the reference rounded once to e4m3 (3 mantissa bits), give or take a rounding boundary.
    assert relative_error(fp8, expected) < 0.04
    assert (fp8.float() - expected.float().to(torch.float8_e4m3fn).float()).abs().max() <= 0.07 * expected.abs().max()

    plain = group_norm(x, None, weight, bias, groups, 1e-5, False, False, None)  # attention's norm: no SiLU
    assert relative_error(plain, group_norm_reference(x, weight, bias, groups, silu=False)) < 2e-3


@pytest.mark.parametrize(
    ("head", "tail", "groups"),
    [
        (256, 128, 32),  # the CIFAR-10 decoder's 384 channels: a 12-channel group straddles the seam
        (24, 8, 4),  # the seam on a group boundary, both parts in one program
    ],
)
def test_group_norm_reads_a_concatenation_in_two_parts(head: int, tail: int, groups: int) -> None:
    g = torch.Generator().manual_seed(head + tail)
    x = channels_last(2, head, 4, 3, generator=g, scale=2.0, offset=0.5)
    skip = channels_last(2, tail, 4, 3, generator=g, offset=-1.0)
    weight = (torch.rand(head + tail, generator=g) + 0.5).to(DEVICE)
    bias = (torch.randn(head + tail, generator=g) * 0.2).to(DEVICE)
    expected = group_norm_reference(torch.cat([x, skip], dim=1), weight, bias, groups)

    out = group_norm(x, skip, weight, bias, groups, 1e-5, True, False, None)
    assert out.shape == (2, head + tail, 4, 3) and out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, expected) < 2e-3
    assert relative_error(group_norm(x, skip, weight, bias, groups, 1e-5, True, True, None), expected) < 0.04


@pytest.mark.parametrize("hw", [(4, 3), (20, 20)])  # the register-resident kernel and the streaming one
def test_group_norm_adds_a_head_bias_as_it_reads(hw: tuple[int, int]) -> None:
    """A bias that x's producer left out (the upsampling's) is added to x's channels, not the tail's."""
    g = torch.Generator().manual_seed(hw[0])
    x, skip = channels_last(2, 48, *hw, generator=g), channels_last(2, 16, *hw, generator=g, offset=1.0)
    head_bias = (torch.randn(48, generator=g) * 3).to(DEVICE)
    weight, bias = (torch.rand(64, generator=g) + 0.5).to(DEVICE), torch.randn(64, generator=g).to(DEVICE)
    biased = torch.cat([x.double() + head_bias.double()[:, None, None], skip.double()], 1)
    expected = group_norm_reference(biased, weight, bias, 16)
    assert relative_error(group_norm(x, skip, weight, bias, 16, 1e-5, True, False, None, head_bias), expected) < 2e-3
    with pytest.raises(ValueError, match="head_bias must be float32 of x's 48 channels"):
        group_norm(x, skip, weight, bias, 16, 1e-5, True, False, None, head_bias[:16])


def test_group_norm_names_what_is_wrong() -> None:
    x = torch.zeros(1, 12, 2, 2, dtype=torch.float16, device=DEVICE)
    ones, zeros = torch.ones(12, device=DEVICE), torch.zeros(12, device=DEVICE)
    with pytest.raises(ValueError, match="12 channels do not split into 5 groups"):
        group_norm(x, None, ones, zeros, 5, 1e-5, True, True, None)
    with pytest.raises(ValueError, match="x is torch.float32"):
        group_norm(x.float(), None, ones, zeros, 4, 1e-5, True, True, None)
    with pytest.raises(ValueError, match="tail .* is not a channel continuation"):
        group_norm(x[:, :8], x[:, :4, :1], ones, zeros, 4, 1e-5, True, True, None)


@pytest.mark.parametrize(
    ("n", "c_in", "c_out", "h", "w", "tma"),
    [
        (2, 32, 48, 6, 5, False),  # whole K chunks, a partial block of output channels; not a power of two
        (1, 40, 24, 5, 7, False),  # a partial K chunk (40 of 64 channels)
        (3, 64, 128, 4, 4, True),  # several images in one pixel block, the last one partly past the batch
        (2, 32, 48, 8, 16, True),  # one block per image, a partial block of output channels
        (1, 48, 16, 16, 16, True),  # two blocks per image; a partial K chunk (48 of 64 channels)
    ],
)
def test_conv3x3_fp8_matches_conv2d_of_the_same_fp8_values(n: int, c_in: int, c_out: int, h: int, w: int, tma: bool) -> None:
    g = torch.Generator().manual_seed(n * c_in + c_out)
    x = channels_last(n, c_in, h, w, generator=g).to(torch.float8_e4m3fn)
    assert (_tma_pixel_block(x) is not None) == tma  # which of the two kernels this case runs
    weight = torch.randn(c_out, c_in, 3, 3, generator=g) / (9 * c_in) ** 0.5
    bias = torch.randn(c_out, generator=g).to(DEVICE)
    row = torch.randn(n, c_out, generator=g).half().to(DEVICE)
    residual = channels_last(n, c_out, h, w, generator=g)
    packed, scale = pack_weight(weight.to(DEVICE))
    dequantised = (packed.float() * scale[:, None]).reshape(c_out, 3, 3, c_in).permute(0, 3, 1, 2)

    expected = F.conv2d(x.double(), dequantised.double(), bias.double(), padding=1)
    out = conv3x3_fp8(x, packed, scale, bias, None, None, [], None)
    assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, expected) < 2e-3  # fp32 accumulation of exact products, one fp16 rounding

    expected = expected + row.double()[:, :, None, None] + residual.double()
    assert relative_error(conv3x3_fp8(x, packed, scale, bias, row, residual, [], None), expected) < 2e-3

    # Against the fp32 weights the error is FP8's rounding of them: a few percent.
    assert relative_error(out, F.conv2d(x.double(), weight.double().to(DEVICE), bias.double(), padding=1)) < 0.05


@pytest.mark.parametrize(
    ("n", "c_in", "parts", "c_out", "hw", "tma"),
    [
        (2, 32, (24,), 32, 5, False),  # one part, not a power of two: the pointer kernel's channel masks
        (1, 32, (40, 12), 48, 6, False),  # a decoder's two parts, neither a multiple of the 64-channel K chunk
        (3, 32, (64,), 32, 4, True),  # several images per pixel block
        (2, 32, (48, 80), 32, 8, True),  # a head chunk running past its part into the tail's weights
        (1, 32, (32, 32), 16, 16, True),  # two blocks per image
        (2, 128, (96, 40), 64, 8, True),  # C_in 128: on an H100 the Gluon kernel's fp16 steps
    ],
)
def test_conv3x3_fp8_adds_a_skip_projection_in_its_accumulator(n: int, c_in: int, parts: tuple[int, ...], c_out: int, hw: int, tma: bool) -> None:
    """conv2 of a ResBlock whose skip connection is a 1x1 convolution of its (possibly two-part) input."""
    g = torch.Generator().manual_seed(sum(parts) + hw)
    x = channels_last(n, c_in, hw, hw, generator=g).to(torch.float8_e4m3fn)
    assert (_tma_pixel_block(x) is not None) == tma
    packed, scale = pack_weight(torch.randn(c_out, c_in, 3, 3, generator=g).to(DEVICE) / (3 * c_in**0.5))
    bias = torch.randn(c_out, generator=g).to(DEVICE)
    inputs = [channels_last(n, c, hw, hw, generator=g) for c in parts]
    skip_weight = (torch.randn(c_out, sum(parts), generator=g) / sum(parts) ** 0.5).half().to(DEVICE)
    dequantised = (packed.float() * scale[:, None]).reshape(c_out, 3, 3, c_in).permute(0, 3, 1, 2)

    expected = F.conv2d(x.double(), dequantised.double(), bias.double(), padding=1)
    expected = expected + F.conv2d(torch.cat(inputs, 1).double(), skip_weight.double()[:, :, None, None])
    out = conv3x3_fp8(x, packed, scale, bias, None, None, inputs, skip_weight)
    assert relative_error(out, expected) < 2e-3


@pytest.mark.parametrize(("n", "hw"), [(2, 16), (1, 32), (5, 4)])  # one or more blocks per image; four images per block
def test_conv3x3_fp8_stats_feed_group_norm(n: int, hw: int) -> None:
    """The statistics a convolution computes in its epilogue normalise its output as a second read would."""
    g = torch.Generator().manual_seed(n + hw)
    x = channels_last(n, 32, hw, hw, generator=g).to(torch.float8_e4m3fn)
    assert fused_statistics(x)
    blocks = hw * hw // _statistics_block(x, warp_specialized=True)  # the Triton kernel's 128-pixel blocks, or on an H100 the Gluon kernel's 256
    packed, scale = pack_weight(torch.randn(64, 32, 3, 3, generator=g).to(DEVICE) / 17)
    bias = (torch.randn(64, generator=g) + 2.0).to(DEVICE)  # channel means well away from zero
    row = torch.randn(n, 64, generator=g).half().to(DEVICE)
    out, stats = conv3x3_fp8_stats(x, packed, scale, bias, row)
    assert torch.equal(out, conv3x3_fp8(x, packed, scale, bias, row, None, [], None))
    assert stats.shape == (n, blocks, 2, 64) and stats.dtype == torch.float32

    pixels = out.float().permute(0, 2, 3, 1).reshape(n, blocks, -1, 64)  # each block's pixels, in image order
    torch.testing.assert_close(stats[:, :, 0], pixels.mean(dim=2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stats[:, :, 1], pixels.var(dim=2, unbiased=False) * pixels.shape[2], rtol=1e-3, atol=1e-3)

    weight, norm_bias = (torch.rand(64, generator=g) + 0.5).to(DEVICE), torch.randn(64, generator=g).to(DEVICE)
    fused = group_norm(out, None, weight, norm_bias, 8, 1e-5, True, False, stats)
    assert relative_error(fused, group_norm(out, None, weight, norm_bias, 8, 1e-5, True, False, None)) < 1e-3
    with pytest.raises(ValueError, match="not conv3x3_fp8_stats' for x"):
        group_norm(out[:, :32].contiguous(memory_format=torch.channels_last), None, weight[:32], norm_bias[:32], 8, 1e-5, True, False, stats)
    odd = channels_last(1, 32, 5, 5, generator=g).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="needs the TMA kernel"):
        conv3x3_fp8_stats(odd, packed, scale, bias, None)


@pytest.mark.parametrize(
    ("n", "c_in", "c_out", "hw", "has_row", "stats", "has_residual", "skips"),
    [
        (256, 128, 128, 32, True, True, False, ()),  # first convolutions: 256-pixel tiles, four per image
        (256, 512, 256, 16, True, True, False, ()),  # two output-channel tiles, one pixel tile per image
        (256, 512, 256, 8, True, True, False, ()),  # four images per tile
        (256, 256, 256, 4, True, True, False, ()),  # 64-pixel tiles, two programs per SM
        (256, 256, 256, 4, False, False, True, ()),  # second convolutions: a residual read before the main loop
        (256, 128, 128, 32, False, False, True, ()),  # and one read in the epilogue (256-pixel tiles)
        (256, 128, 128, 32, False, False, False, (256, 128)),  # a decoder's two-part skip projection
        (256, 256, 256, 4, False, False, False, (256, 256)),
        (3, 48, 40, 16, True, False, False, ()),  # a partial K chunk and a partial output-channel tile
    ],
)
def test_warp_specialized_conv_compiles_for_hopper(
    n: int, c_in: int, c_out: int, hw: int, has_row: bool, stats: bool, has_residual: bool, skips: tuple[int, ...]
) -> None:  # fmt: skip
    """The Gluon kernel (`conv3x3_hopper`) through Triton's whole sm_90 pipeline, ptxas included.

    Gluon does not run under Triton's interpreter, so without an H100 this is what can be checked: the
    kernel compiles for every configuration the U-Net launches, into warp-specialized TMA and FP8
    wgmma code whose shared memory fits the programs an SM is meant to hold. On an H100 the
    conv3x3_fp8 tests above run it against conv2d (the skip projection's where C_in is 128 or
    more, which the kernel needs for it). The compiler runs in a process of its own
    (tests/hopper_compile.py says why).
    """
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("hopper_compile.py")
    arguments = [str(v) for v in (n, c_in, c_out, hw, int(has_row), int(stats), int(has_residual), *skips)]
    result = subprocess.run([sys.executable, str(script), *arguments], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = json.loads(result.stdout)
    assert compiled["fp8_wgmma"]  # FP8 tensor-core products
    assert compiled["fp16_wgmma"] == bool(skips)  # the skip projection's fp16 ones
    assert compiled["warp_specialized"]  # the loader warp gives its registers to the compute warps
    assert compiled["tma_4d"]  # TMA boxes of the NHWC input
    programs = Tiling.for_image(hw, hw).programs_per_sm
    assert programs * (compiled["shared_bytes"] + 1024) <= 228 * 1024  # an H100 SM's shared memory, 1 KB reserved per program


def test_conv3x3_fp8_names_what_is_wrong() -> None:
    x = torch.zeros(1, 16, 4, 4, device=DEVICE).to(torch.float8_e4m3fn)
    packed, scale = pack_weight(torch.randn(8, 16, 3, 3, device=DEVICE))
    skip = torch.zeros(1, 24, 4, 4, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="float8_e4m3fn input"):
        conv3x3_fp8(x.half(), packed, scale, scale, None, None, [], None)
    with pytest.raises(ValueError, match="not pack_weight"):
        conv3x3_fp8(x[:, :8], packed, scale, scale, None, None, [], None)
    with pytest.raises(ValueError, match="residual .* is not the output's shape"):
        conv3x3_fp8(x, packed, scale, scale, None, x.half(), [], None)
    with pytest.raises(ValueError, match="1 or 2 input parts and its weight together"):
        conv3x3_fp8(x, packed, scale, scale, None, None, [skip], None)
    with pytest.raises(ValueError, match="1 or 2 input parts"):
        conv3x3_fp8(x, packed, scale, scale, None, None, [skip] * 3, torch.zeros(8, 72, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match=r"a skip input must be float16 \[1, C, 4, 4\]"):
        conv3x3_fp8(x, packed, scale, scale, None, None, [skip[:, :, :2]], torch.zeros(8, 24, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match=r"the skip weight must be float16 \[8, 24\]"):
        conv3x3_fp8(x, packed, scale, scale, None, None, [skip], torch.zeros(8, 16, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match=r"\[C_out, C_in, 3, 3\]"):
        pack_weight(torch.randn(8, 16, 1, 1))


@pytest.mark.parametrize(("m", "k", "n"), [(300, 40, 24), (256, 256, 256), (16, 8, 200)])  # masks on every edge; the U-Net's shape
def test_linear_residual_is_the_projection_plus_the_residual(m: int, k: int, n: int) -> None:
    g = torch.Generator().manual_seed(m + k + n)
    x, residual = (torch.randn(rows, cols, generator=g).half().to(DEVICE) for rows, cols in ((m, k), (m, n)))
    weight = (torch.randn(n, k, generator=g) / k**0.5).half().to(DEVICE)
    bias = torch.randn(n, generator=g).half().to(DEVICE)
    out = linear_residual(x, weight, bias, residual)
    assert out.shape == (m, n) and out.dtype == torch.float16
    expected = residual.double() + x.double() @ weight.double().T + bias.double()
    assert relative_error(out, expected) < 1e-3


def test_linear_residual_names_what_is_wrong() -> None:
    x, weight, bias = (torch.zeros(*shape, dtype=torch.float16, device=DEVICE) for shape in ((4, 8), (6, 8), (6,)))
    with pytest.raises(ValueError, match=r"not \(4, 8\) by \(6, 4\)"):
        linear_residual(x, weight[:, :4], bias, torch.zeros(4, 6, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match=r"residual \(4, 5\) do not fit the output \(4, 6\)"):
        linear_residual(x, weight, bias, torch.zeros(4, 5, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="x is torch.float32"):
        linear_residual(x.float(), weight, bias, torch.zeros(4, 6, dtype=torch.float16, device=DEVICE))


def test_quantize_keeps_the_largest_magnitude_of_each_row_or_of_the_whole() -> None:
    matrix = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [300.0, 1000.0, -10.0]])
    weight, scale = quantize_rows(matrix)
    assert weight.dtype == torch.float8_e4m3fn and weight.float().abs().amax(dim=1).tolist() == [FP8_MAX, 0.0, FP8_MAX]
    torch.testing.assert_close(weight.float() * scale[:, None], matrix, rtol=0.07, atol=0.0)  # 3 mantissa bits
    with pytest.raises(ValueError, match=r"\[rows, K\] matrix, not \(3,\)"):
        quantize_rows(matrix[0])
    weight, scale = quantize_tensor(matrix)
    assert scale.dim() == 0 and weight.float().abs().max() == FP8_MAX
    torch.testing.assert_close(weight.float() * scale, matrix, rtol=0.07, atol=1e-3)  # 1.0 and 0.5 still sit well inside e4m3's range


@pytest.mark.parametrize("rows", [512, 13])  # a multiple of cuBLAS's 16 rows, and one padded to it
def test_fp8_linear_is_the_projection_of_the_same_fp8_values(rows: int) -> None:
    from ddpm_triton.fastpath import TokenLinear
    from ddpm_triton.fp8 import Fp8Linear

    g = torch.Generator().manual_seed(rows)
    conv = torch.nn.Conv2d(64, 96, 1).to(DEVICE).half()
    linear = Fp8Linear(TokenLinear(conv))
    tokens = torch.randn(2, rows, 64, generator=g).to(DEVICE).to(torch.float8_e4m3fn)
    out = linear(tokens)
    assert out.shape == (2, rows, 96) and out.dtype == torch.float16
    expected = tokens.double() @ (linear.weight.double() * linear.scale.double()).T + linear.bias.double()
    assert relative_error(out, expected) < 1e-3  # fp32 accumulation, one rounding to fp16
    # Against the unquantised layer: FP8 rounds each weight to 3 mantissa bits.
    assert relative_error(out, F.linear(tokens.half(), conv.weight[:, :, 0, 0], conv.bias)) < 0.05


def test_fake_implementations_agree_with_the_kernels() -> None:
    """What torch.compile traces (the fake kernels' shapes, dtypes and strides) is what runs."""
    g = torch.Generator().manual_seed(7)
    x = channels_last(2, 32, 4, 4, generator=g)
    weight, bias = torch.ones(32, device=DEVICE), torch.zeros(32, device=DEVICE)
    torch.library.opcheck(group_norm, (x, None, weight, bias, 8, 1e-5, True, True, None), test_utils="test_faketensor")
    halves = (x[:, :16].contiguous(memory_format=torch.channels_last), x[:, 16:].contiguous(memory_format=torch.channels_last))
    torch.library.opcheck(group_norm, (*halves, weight, bias, 8, 1e-5, False, False, None), test_utils="test_faketensor")
    packed, scale = pack_weight(torch.randn(16, 32, 3, 3, generator=g).to(DEVICE))
    args = (x.to(torch.float8_e4m3fn), packed, scale, torch.zeros(16, device=DEVICE), None)
    torch.library.opcheck(conv3x3_fp8_stats, args, test_utils="test_faketensor")
    skip = [x[:, :8].contiguous(memory_format=torch.channels_last), x[:, 8:]]
    skip_weight = torch.randn(16, 32, generator=g).half().to(DEVICE)
    torch.library.opcheck(conv3x3_fp8, (*args, channels_last(2, 16, 4, 4, generator=g), skip, skip_weight), test_utils="test_faketensor")
    tokens = x.permute(0, 2, 3, 1).reshape(32, 32)
    torch.library.opcheck(linear_residual, (tokens, skip_weight, skip_weight[:, 0], tokens[:, :16]), test_utils="test_faketensor")


def test_fp8_unet_predicts_the_fp32_unets_noise() -> None:
    """The fp8 precision end to end, every ResBlock and every attention swapped.

    Each block's output is within FP8's rounding of its fp32 output (measured 1.5-3.1% on an H100:
    e4m3 keeps 3 mantissa bits of both convolution inputs). With random, untrained weights the
    blocks' errors compound through the whole U-Net (9% measured); on the trained MNIST model fp8
    samples are read as the same digit as fp32's every time (`ddpm-triton evaluate`, benchmarks/README.md).
    """
    from ddpm_triton.config import preset
    from ddpm_triton.fastpath import TokenAttention
    from ddpm_triton.fp8 import Fp8Linear, Fp8ResBlock
    from ddpm_triton.precision import PrecisionWrapper
    from ddpm_triton.unet import ResBlock, SelfAttention, UNet

    torch.manual_seed(0)
    config = preset("tiny").unet
    model = UNet(config).to(DEVICE).eval()
    with torch.no_grad():  # the zero-initialised output layers would hide the blocks' error
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    fp8 = PrecisionWrapper(model, "fp8").to(DEVICE)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    fp8_blocks = [m for m in fp8.modules() if isinstance(m, Fp8ResBlock)]
    assert len(fp8_blocks) == len(blocks) and not any(isinstance(m, ResBlock) for m in fp8.modules())
    attentions = [m for m in model.modules() if isinstance(m, SelfAttention)]
    fp8_attentions = [m for m in fp8.modules() if isinstance(m, TokenAttention) and isinstance(m.qkv, Fp8Linear)]
    assert attentions and len(fp8_attentions) == len(attentions)

    emb = torch.randn(2, 4 * config.base_channels, device=DEVICE)
    with torch.inference_mode():
        for block, fp8_block in zip(blocks, fp8_blocks):
            x = torch.randn(2, block.conv1.in_channels, 8, 8, device=DEVICE)
            half = x.half().contiguous(memory_format=torch.channels_last)
            expected = block(x, emb)
            assert relative_error(fp8_block(half, emb.half()), expected) < 0.05
            # A decoder block's input in two parts: its features and the encoder's skip connection.
            head = x.shape[1] // 2
            parts = half[:, :head].contiguous(memory_format=torch.channels_last), half[:, head:].contiguous(memory_format=torch.channels_last)
            assert relative_error(fp8_block(parts[0], emb.half(), parts[1]), expected) < 0.05
        for attention, fp8_attention in zip(attentions, fp8_attentions):
            x = torch.randn(2, attention.qkv.in_channels, 8, 8, device=DEVICE)
            # Against what attention adds to its input: FP8 rounds the qkv projection's inputs and weights.
            change = fp8_attention(x.half().contiguous(memory_format=torch.channels_last)).float() - x
            assert relative_error(change, attention(x) - x) < 0.05

        x = torch.randn(3, config.in_channels, config.image_size, config.image_size, device=DEVICE)
        t = torch.tensor([5.0, 400.0, 999.0], device=DEVICE)
        labels = torch.tensor([0, 1, config.num_classes], device=DEVICE) if config.conditional else None
        expected = model(x, t, labels)
        out = fp8(x.contiguous(memory_format=torch.channels_last), t, labels)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert relative_error(out, expected) < 0.2


@pytest.mark.parametrize("two_parts", [False, True])
def test_fp8_block_takes_over_its_inputs_bias(two_parts: bool) -> None:
    """A block that absorbs its input's bias computes, from x, what it computed from x + bias."""
    from ddpm_triton.fp8 import Fp8ResBlock
    from ddpm_triton.unet import ResBlock

    torch.manual_seed(3)
    block = ResBlock(48, 32, 64, 0.0, 8).to(DEVICE).half().eval()
    torch.nn.init.normal_(block.conv2.weight, std=0.05)  # zero-initialised: the test would see only the skip path
    bias = torch.randn(32 if two_parts else 48, device=DEVICE).half()
    reference, absorbing = Fp8ResBlock(block), Fp8ResBlock(block)
    absorbing.absorb_input_bias(bias)
    x = torch.randn(2, 48, 8, 8, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 64, device=DEVICE).half()
    with torch.inference_mode():
        if two_parts:  # a decoder block: the bias is the head's (the upsampled features), not the skip connection's
            head, tail = (part.contiguous(memory_format=torch.channels_last) for part in (x[:, :32], x[:, 32:]))
            expected = reference((head + bias[:, None, None]).contiguous(memory_format=torch.channels_last), emb, tail)
            out = absorbing(head, emb, tail)
        else:
            expected = reference((x + bias[:, None, None]).contiguous(memory_format=torch.channels_last), emb)
            out = absorbing(x, emb)
    assert relative_error(out, expected) < 0.02  # the same FP8 values, give or take a rounding boundary
    identity = Fp8ResBlock(ResBlock(32, 32, 64, 0.0, 8).to(DEVICE).half())
    with pytest.raises(ValueError, match="only a block with a skip projection"):
        identity.absorb_input_bias(bias[:32])


def test_fast_fp8_unet_moves_the_upsampling_bias_into_the_next_block() -> None:
    """The fast layers of an fp8 U-Net: the upsampling's bias moves into the next block, and the
    noise predicted stays the same."""
    from ddpm_triton.config import preset
    from ddpm_triton.fastpath import TransposedUpsample, use_fast_layers
    from ddpm_triton.precision import PrecisionWrapper
    from ddpm_triton.unet import UNet

    torch.manual_seed(1)
    config = preset("tiny").unet
    model = UNet(config).to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
        for m in model.upsample:  # biases well away from zero, so that losing one would show
            if not isinstance(m, torch.nn.Identity):
                m.conv.bias.normal_(0, 3.0)
    plain, fast = PrecisionWrapper(model, "fp8").to(DEVICE), PrecisionWrapper(model, "fp8").to(DEVICE)
    use_fast_layers(fast.unet, triton_kernels=True, pad_channels=False)
    upsamplings = [m for m in fast.modules() if isinstance(m, TransposedUpsample)]
    assert upsamplings and all(m.bias is None for m in upsamplings)
    assert all(level.blocks[0].norm1.head_bias is not None for level in list(fast.unet.up)[1:])

    x = torch.randn(2, config.in_channels, config.image_size, config.image_size, device=DEVICE)
    t = torch.tensor([10.0, 700.0], device=DEVICE)
    labels = torch.tensor([1, config.num_classes], device=DEVICE) if config.conditional else None
    with torch.inference_mode():
        expected = model(x, t, labels)
        x = x.contiguous(memory_format=torch.channels_last)
        errors = [relative_error(wrapper(x, t, labels), expected) for wrapper in (plain, fast)]
    # FP8 rounds the two differently (and a random U-Net compounds it): no error of their own beyond that.
    assert errors[1] < 1.5 * errors[0] + 0.02, errors


def test_fp8_refuses_what_it_cannot_run(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ddpm_triton.config import preset
    from ddpm_triton.fp8 import use_fp8_layers
    from ddpm_triton.unet import UNet

    with pytest.raises(ValueError, match="fp16 U-Net"):
        use_fp8_layers(UNet(preset("tiny").unet))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="on a CUDA GPU"):
        use_fp8_layers(UNet(preset("tiny").unet).half())


def test_fp8_runner_runs_small_batches_in_fp16(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Below FP8_MIN_BATCH the fp8 kernels lose to fp16 on an H100, so an fp8 runner switches there."""
    from ddpm_triton import runners
    from ddpm_triton.bench import random_checkpoint
    from ddpm_triton.config import preset

    checkpoint = random_checkpoint("tiny", tmp_path / "model.safetensors")
    monkeypatch.setattr(runners, "FP8_MIN_BATCH", 2)  # the interpreter is slow: keep the fp8 batch small
    fp8 = runners.load_runner(checkpoint, DEVICE, precision="fp8")
    fp16 = runners.load_runner(checkpoint, DEVICE, precision="fp16")
    u = preset("tiny").unet
    x, t = torch.randn(2, u.in_channels, u.image_size, u.image_size), torch.tensor([10.0, 500.0])
    labels = torch.tensor([3, u.num_classes]) if fp8.conditional else None
    assert torch.equal(fp8(x[:1], t[:1], None if labels is None else labels[:1]), fp16(x[:1], t[:1], None if labels is None else labels[:1]))
    large = fp8(x, t, labels)
    assert not torch.equal(large, fp16(x, t, labels))
    assert relative_error(large, fp16(x, t, labels)) < 0.2


def test_token_attention_runs_the_triton_kernels() -> None:
    """On a CUDA GPU the fp16 live path's attention blocks normalise through `group_norm` (no SiLU)
    and add the residual in the output projection (`linear_residual`)."""
    from ddpm_triton.fastpath import TokenAttention, TritonGroupNorm
    from ddpm_triton.unet import SelfAttention

    torch.manual_seed(2)
    attention = SelfAttention(32, heads=4, groups=8)
    torch.nn.init.normal_(attention.proj.weight, std=0.2)  # zero-initialised: the test would see only the residual
    x = torch.randn(2, 32, 4, 4)
    fast = TokenAttention(attention.half().to(DEVICE), triton_kernels=True)
    assert isinstance(fast.norm, TritonGroupNorm) and fast.project is linear_residual
    with torch.inference_mode():
        out = fast(x.half().to(DEVICE).contiguous(memory_format=torch.channels_last))
    assert relative_error(out.cpu(), attention.float().cpu()(x)) < 5e-3


def test_fast_layers_normalise_the_output_with_the_triton_kernel() -> None:
    """On a CUDA GPU the fp16 live path's output GroupNorm and SiLU are one `group_norm` call."""
    from ddpm_triton.config import preset
    from ddpm_triton.fastpath import TritonGroupNorm, use_fast_layers
    from ddpm_triton.precision import PrecisionWrapper
    from ddpm_triton.unet import UNet

    torch.manual_seed(3)
    config = preset("tiny").unet
    model = UNet(config).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)  # zero-initialised: the output would be zeros
    fast = PrecisionWrapper(model, "fp16").to(DEVICE)
    use_fast_layers(fast.unet, triton_kernels=True, pad_channels=False)
    assert isinstance(fast.unet.norm_out, TritonGroupNorm) and isinstance(fast.unet.act_out, torch.nn.Identity)
    x, t = torch.randn(2, config.in_channels, config.image_size, config.image_size), torch.tensor([3.0, 700.0])
    labels = torch.tensor([1, config.num_classes]) if config.conditional else None
    with torch.inference_mode():
        out = fast(x.to(DEVICE).contiguous(memory_format=torch.channels_last), t.to(DEVICE), None if labels is None else labels.to(DEVICE))
        assert relative_error(out.cpu(), model(x, t, labels)) < 5e-3
