"""The live path's rewritten layers (`fastpath`) compute what the layers they replace compute."""

from __future__ import annotations

import copy

import pytest
import torch

from ddpm_triton.bench import random_checkpoint
from ddpm_triton.config import preset
from ddpm_triton.fastpath import ChannelPaddedConv, TapMatmulConv, TokenAttention, TransposedUpsample, use_fast_layers
from ddpm_triton.runners import load_runner
from ddpm_triton.unet import SelfAttention, UNet, Upsample


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("height, width", [(4, 4), (7, 7), (5, 6)])  # 7x7: the MNIST U-Net's odd lowest level
@pytest.mark.parametrize("channels_last", [False, True])
def test_transposed_upsample_is_upsample(height: int, width: int, channels_last: bool) -> None:
    torch.manual_seed(height * width)
    upsample = Upsample(6)
    x = torch.randn(2, 6, height, width)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.nn.init.normal_(upsample.conv.bias)
    out = TransposedUpsample(upsample)(x)
    expected = upsample(x)
    assert out.shape == expected.shape == (2, 6, 2 * height, 2 * width)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "stride", "padding", "bias_channel"),
    [(3, 16, 1, 1, True), (16, 1, 1, 1, False), (5, 7, 2, 1, True), (1, 8, 1, 0, False), (3, 4, 2, 0, False)],
)
def test_channel_padded_conv_is_the_conv(in_channels: int, out_channels: int, stride: int, padding: int, bias_channel: bool) -> None:
    torch.manual_seed(in_channels + out_channels)
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding)
    torch.nn.init.normal_(conv.bias)
    padded = ChannelPaddedConv(conv)
    assert padded.weight.shape[:2] == (-(-out_channels // 8) * 8, -(-in_channels // 8) * 8)
    assert padded.bias_channel == bias_channel  # the bias rides an all-ones padded channel where the centre tap stays inside
    x = torch.randn(2, in_channels, 9, 8).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(padded(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("in_channels", "out_channels", "bias"), [(16, 3, True), (12, 1, False), (8, 9, True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tap_matmul_conv_is_the_conv(in_channels: int, out_channels: int, bias: bool, channels_last: bool) -> None:
    torch.manual_seed(in_channels + out_channels)
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    if bias:
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, in_channels, 7, 6)  # not square: rows and columns are not swapped
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = TapMatmulConv(conv)(x)
    assert out.shape == (2, out_channels, 7, 6) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a 3x3 convolution with stride 1 and padding 1"):
        TapMatmulConv(torch.nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_token_attention_is_self_attention(channels_last: bool) -> None:
    torch.manual_seed(1)
    attention = SelfAttention(16, heads=4, groups=4)
    torch.nn.init.normal_(attention.proj.weight, std=0.2)  # zero-initialised: the test would see only the residual
    x = torch.randn(2, 16, 5, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(TokenAttention(attention, triton_kernels=False)(x), attention(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "mnist"])
def test_fast_unet_predicts_the_same_noise(name: str) -> None:
    torch.manual_seed(0)
    config = preset(name).unet
    model = UNet(config).eval()
    with torch.no_grad():  # the zero-initialised output layers would hide any difference
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    fast = use_fast_layers(copy.deepcopy(model), triton_kernels=False, pad_channels=True)
    assert not any(isinstance(m, (SelfAttention, Upsample)) for m in fast.modules())
    assert any(isinstance(m, TokenAttention) for m in fast.modules())
    assert any(isinstance(m, TransposedUpsample) for m in fast.modules())
    assert isinstance(fast.conv_in, ChannelPaddedConv) and isinstance(fast.conv_out, TapMatmulConv)  # the image's channels

    x = torch.randn(3, config.in_channels, config.image_size, config.image_size)
    t = torch.tensor([1.0, 250.0, 999.0])
    labels = torch.tensor([0, 7, config.num_classes]) if config.conditional else None
    with torch.no_grad():
        expected = model(x, t, labels)
        assert relative_error(fast(x, t, labels), expected) < 1e-5
        assert relative_error(fast(x.contiguous(memory_format=torch.channels_last), t, labels), expected) < 1e-5


def test_the_pytorch_runner_runs_the_fast_layers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    checkpoint = random_checkpoint("tiny", tmp_path / "model.safetensors")
    runner = load_runner(checkpoint)
    assert any(isinstance(m, TokenAttention) for m in runner.module.modules())
    assert any(isinstance(m, TransposedUpsample) for m in runner.module.modules())
