"""The DDPM noise predictor: a U-Net in the style of Ho et al. 2020.

Written for export as much as for training: the forward pass takes the timestep per sample as a
float tensor and the label as an int tensor, uses only ops that trace into TorchScript and ONNX
with a dynamic batch, and routes attention through `scaled_dot_product_attention` so each backend
can pick its fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of (possibly fractional) timesteps, [B] -> [B, dim], always in float32.

    The frequency indices are an integer buffer: they follow the module to its device (a traced
    `torch.arange(device=...)` would pin the artifact to the tracing device) and survive `.half()`
    (sin/cos of timesteps near 1000 need float32 frequencies).
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.log_max_period = math.log(max_period)
        self.register_buffer("index", torch.arange(dim // 2), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-self.log_max_period * self.index.float() / self.index.numel())
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time (and label) embedding added in between."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tail: torch.Tensor | None = None) -> torch.Tensor:
        """tail: channels concatenated after x's (the decoder's skip connection). Passing it apart
        lets a faster block (`fp8.Fp8ResBlock`) read both where they lie."""
        if tail is not None:
            x = torch.cat([x, tail], dim=1)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the spatial positions, residual."""

    def __init__(self, ch: int, heads: int, groups: int) -> None:
        super().__init__()
        if ch % heads:
            raise ValueError(f"{ch} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, head_dim]
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the U-Net: residual blocks, each optionally followed by attention."""

    def __init__(self, blocks: list[ResBlock], attention: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.ModuleList(attention)


class UNet(nn.Module):
    """eps_theta(x_t, t[, label]): predicts the noise that was added to x_0 to make x_t."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch, groups = config.base_channels, config.norm_groups
        emb_dim = 4 * ch
        self.timestep_embedding = TimestepEmbedding(ch)
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Row `num_classes` is the null label that classifier-free guidance samples with.
        self.label_embed = nn.Embedding(config.num_classes + 1, emb_dim) if config.conditional else None
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        def attention(width: int, resolution: int) -> nn.Module:
            if resolution in config.attention_resolutions:
                return SelfAttention(width, config.num_heads, groups)
            return nn.Identity()

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_widths, width, resolution = [ch], ch, config.image_size
        for level, mult in enumerate(config.channel_mult):
            blocks, attn = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(width, ch * mult, emb_dim, config.dropout, groups))
                width = ch * mult
                attn.append(attention(width, resolution))
                skip_widths.append(width)
            self.down.append(Level(blocks, attn))
            last = level == len(config.channel_mult) - 1
            self.downsample.append(nn.Identity() if last else Downsample(width))
            if not last:
                skip_widths.append(width)
                resolution //= 2

        self.mid_block1 = ResBlock(width, width, emb_dim, config.dropout, groups)
        self.mid_attn = SelfAttention(width, config.num_heads, groups)
        self.mid_block2 = ResBlock(width, width, emb_dim, config.dropout, groups)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            blocks, attn = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResBlock(width + skip_widths.pop(), ch * mult, emb_dim, config.dropout, groups))
                width = ch * mult
                attn.append(attention(width, resolution))
            self.up.append(Level(blocks, attn))
            self.upsample.append(Upsample(width) if level > 0 else nn.Identity())
            if level > 0:
                resolution *= 2

        self.norm_out = nn.GroupNorm(groups, width)
        self.act_out = nn.SiLU()  # a module, not F.silu, so a fast path can fuse it into norm_out (no weights)
        self.conv_out = nn.Conv2d(width, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W] in [-1, 1]-ish; t: [B] timesteps; label: [B] ints, `num_classes` = null."""
        emb = self.time_embed(self.timestep_embedding(t))
        if self.label_embed is not None:
            if label is None:
                raise ValueError("this U-Net is class-conditional: pass a label (num_classes for none)")
            emb = emb + self.label_embed(label.long())
        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attention):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attention):
                h = attn(block(h, emb, skips.pop()))
            h = up(h)
        return self.conv_out(self.act_out(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
