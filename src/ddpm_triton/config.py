"""Model configuration: the U-Net's shape and the diffusion process it was trained for.

A `ModelConfig` travels with every checkpoint (as safetensors metadata) so that export, the
server and evaluation rebuild exactly the network that was trained, with no side files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 32
    in_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    dropout: float = 0.1
    norm_groups: int = 32
    num_classes: int = 0
    """0: unconditional. Otherwise a label embedding with one extra "null" row for classifier-free guidance."""

    def __post_init__(self) -> None:
        widths = {self.base_channels * m for m in self.channel_mult}
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"every level width {sorted(widths)} must divide into norm_groups={self.norm_groups}")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"image_size={self.image_size} cannot be halved {len(self.channel_mult) - 1} times "
                f"(channel_mult={self.channel_mult})"
            )

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    schedule: str = "linear"
    """'linear' (Ho et al.), 'cosine' (Nichol & Dhariwal) or 'sigmoid' (Jabri et al.)."""


@dataclass(frozen=True)
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw: dict[str, Any] = json.loads(text)
        unet = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["unet"].items()}
        return cls(unet=UNetConfig(**unet), diffusion=DiffusionConfig(**raw["diffusion"]))


PRESETS: dict[str, ModelConfig] = {
    # Ho et al. 2020, CIFAR-10: 35.7M parameters.
    "cifar10": ModelConfig(UNetConfig(), DiffusionConfig(1000, "linear")),
    # The shipped default: a class-conditional digit model, small enough to serve on a CPU.
    "mnist": ModelConfig(
        UNetConfig(
            image_size=28,
            in_channels=1,
            base_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(7,),
            num_heads=4,
            dropout=0.1,
            norm_groups=8,
            num_classes=10,
        ),
        DiffusionConfig(1000, "cosine"),
    ),
    # For tests: a few hundred thousand parameters, fast on two CPU cores.
    "tiny": ModelConfig(
        UNetConfig(
            image_size=28,
            in_channels=1,
            base_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(14,),
            num_heads=2,
            dropout=0.0,
            norm_groups=8,
            num_classes=10,
        ),
        DiffusionConfig(1000, "cosine"),
    ),
}


def preset(name: str, **unet_overrides: Any) -> ModelConfig:
    """A named preset, optionally with some U-Net fields replaced (e.g. `num_classes=0`)."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return replace(config, unet=replace(config.unet, **unet_overrides)) if unet_overrides else config
