"""The fp8 U-Net's Triton kernels against PyTorch's own ops, on random data.

With no GPU they run under Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported). The interpreter's float -> fp8 conversion rounds wrongly in Triton 3.5/3.6 (7.81 becomes
4.0, 500 becomes 256), unlike the GPU's cvt.rn.satfinite, so the fixture below routes that one
conversion through torch's float8_e4m3fn cast, which is what the GPU computes. Speed is measured in
benchmarks/, never here.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

INTERPRET = not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

from ddpm_triton.kernels.conv3x3 import conv3x3_fp8, pack_weight  # noqa: E402
from ddpm_triton.kernels.group_norm import FP8_MAX, group_norm_silu  # noqa: E402

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


def group_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    return F.silu(F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-5))


@pytest.mark.parametrize(
    ("shape", "groups", "offset"),
    [
        ((2, 32, 8, 8), 8, 0.0),  # 4 channels per group, every group in one program
        ((2, 48, 6, 5), 4, 0.0),  # 12 channels per group (not a power of two), 30 pixels (not a block multiple)
        ((1, 384, 4, 4), 32, 0.0),  # the CIFAR-10 U-Net's widest concatenation: several programs per image
        ((2, 32, 8, 8), 8, 300.0),  # a mean far above the spread: the statistics stay exact
    ],
)
def test_group_norm_silu_matches_pytorch(shape: tuple[int, int, int, int], groups: int, offset: float) -> None:
    g = torch.Generator().manual_seed(sum(shape) + groups)
    x = channels_last(*shape, generator=g, scale=1.5, offset=offset)
    weight = (torch.rand(shape[1], generator=g) + 0.5).to(DEVICE)
    bias = (torch.randn(shape[1], generator=g) * 0.2).to(DEVICE)
    expected = group_norm_reference(x, weight, bias, groups)

    out = group_norm_silu(x, weight, bias, groups, 1e-5, False)
    assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, expected) < 2e-3

    fp8 = group_norm_silu(x, weight, bias, groups, 1e-5, True)
    assert fp8.dtype == torch.float8_e4m3fn and fp8.is_contiguous(memory_format=torch.channels_last)
    # The fp8 values are the reference rounded once to e4m3 (3 mantissa bits), give or take a rounding boundary.
    assert relative_error(fp8, expected) < 0.04
    assert (fp8.float() - expected.float().to(torch.float8_e4m3fn).float()).abs().max() <= 0.07 * expected.abs().max()


def test_group_norm_silu_names_what_is_wrong() -> None:
    x = torch.zeros(1, 12, 2, 2, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="12 channels do not split into 5 groups"):
        group_norm_silu(x, torch.ones(12, device=DEVICE), torch.zeros(12, device=DEVICE), 5, 1e-5, True)
    with pytest.raises(ValueError, match="float16"):
        group_norm_silu(x.float(), torch.ones(12, device=DEVICE), torch.zeros(12, device=DEVICE), 4, 1e-5, True)


@pytest.mark.parametrize(
    ("n", "c_in", "c_out", "h", "w"),
    [
        (2, 32, 48, 6, 5),  # whole K chunks, a partial block of output channels
        (1, 40, 24, 5, 7),  # a partial K chunk (40 of 64 channels)
        (3, 64, 128, 4, 4),  # several images in one pixel block
    ],
)
def test_conv3x3_fp8_matches_conv2d_of_the_same_fp8_values(n: int, c_in: int, c_out: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(n * c_in + c_out)
    x = channels_last(n, c_in, h, w, generator=g).to(torch.float8_e4m3fn)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g) / (9 * c_in) ** 0.5
    bias = torch.randn(c_out, generator=g).to(DEVICE)
    row = torch.randn(n, c_out, generator=g).half().to(DEVICE)
    residual = channels_last(n, c_out, h, w, generator=g)
    packed, scale = pack_weight(weight.to(DEVICE))
    dequantised = (packed.float() * scale[:, None]).reshape(c_out, 3, 3, c_in).permute(0, 3, 1, 2)

    expected = F.conv2d(x.double(), dequantised.double(), bias.double(), padding=1)
    out = conv3x3_fp8(x, packed, scale, bias, None, None)
    assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, expected) < 2e-3  # fp32 accumulation of exact products, one fp16 rounding

    expected = expected + row.double()[:, :, None, None] + residual.double()
    assert relative_error(conv3x3_fp8(x, packed, scale, bias, row, residual), expected) < 2e-3

    # Against the fp32 weights the error is FP8's rounding of them: a few percent.
    assert relative_error(out, F.conv2d(x.double(), weight.double().to(DEVICE), bias.double(), padding=1)) < 0.05


def test_conv3x3_fp8_names_what_is_wrong() -> None:
    x = torch.zeros(1, 16, 4, 4, device=DEVICE).to(torch.float8_e4m3fn)
    packed, scale = pack_weight(torch.randn(8, 16, 3, 3, device=DEVICE))
    with pytest.raises(ValueError, match="float8_e4m3fn input"):
        conv3x3_fp8(x.half(), packed, scale, scale, None, None)
    with pytest.raises(ValueError, match="not pack_weight"):
        conv3x3_fp8(x[:, :8], packed, scale, scale, None, None)
    with pytest.raises(ValueError, match=r"\[C_out, C_in, 3, 3\]"):
        pack_weight(torch.randn(8, 16, 1, 1))


def test_fake_implementations_agree_with_the_kernels() -> None:
    """What torch.compile traces (the fake kernels' shapes, dtypes and strides) is what runs."""
    g = torch.Generator().manual_seed(7)
    x = channels_last(2, 32, 4, 4, generator=g)
    weight, bias = torch.ones(32, device=DEVICE), torch.zeros(32, device=DEVICE)
    torch.library.opcheck(group_norm_silu, (x, weight, bias, 8, 1e-5, True), test_utils="test_faketensor")
    packed, scale = pack_weight(torch.randn(16, 32, 3, 3, generator=g).to(DEVICE))
    args = (x.to(torch.float8_e4m3fn), packed, scale, torch.zeros(16, device=DEVICE), None, channels_last(2, 16, 4, 4, generator=g))
    torch.library.opcheck(conv3x3_fp8, args, test_utils="test_faketensor")


def test_fp8_unet_predicts_the_fp32_unets_noise() -> None:
    """The fp8 precision end to end, every ResBlock swapped.

    Each block's output is within FP8's rounding of its fp32 output (measured 1.5-3.1% on an H100:
    e4m3 keeps 3 mantissa bits of both convolution inputs). With random, untrained weights the
    blocks' errors compound through the whole U-Net (9% measured); on the trained MNIST model fp8
    samples are read as the same digit as fp32's every time (`ddpm-triton evaluate`, benchmarks/README.md).
    """
    from ddpm_triton.config import preset
    from ddpm_triton.fp8 import Fp8ResBlock
    from ddpm_triton.precision import PrecisionWrapper
    from ddpm_triton.unet import ResBlock, UNet

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

    emb = torch.randn(2, 4 * config.base_channels, device=DEVICE)
    with torch.inference_mode():
        for block, fp8_block in zip(blocks, fp8_blocks):
            x = torch.randn(2, block.conv1.in_channels, 8, 8, device=DEVICE)
            out = fp8_block(x.half().contiguous(memory_format=torch.channels_last), emb.half())
            assert relative_error(out, block(x, emb)) < 0.05

        x = torch.randn(3, config.in_channels, config.image_size, config.image_size, device=DEVICE)
        t = torch.tensor([5.0, 400.0, 999.0], device=DEVICE)
        labels = torch.tensor([0, 1, config.num_classes], device=DEVICE) if config.conditional else None
        expected = model(x, t, labels)
        out = fp8(x.contiguous(memory_format=torch.channels_last), t, labels)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert relative_error(out, expected) < 0.2


def test_fp8_refuses_what_it_cannot_run(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ddpm_triton.config import preset
    from ddpm_triton.fp8 import use_fp8_resblocks
    from ddpm_triton.unet import UNet

    with pytest.raises(ValueError, match="fp16 U-Net"):
        use_fp8_resblocks(UNet(preset("tiny").unet))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="on a CUDA GPU"):
        use_fp8_resblocks(UNet(preset("tiny").unet).half())


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
