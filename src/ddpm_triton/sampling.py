"""The offline denoising loop: one batch from x_T to x_0, observable step by step.

The loop is a generator: it yields each U-Net evaluation it needs (`UNetCall`) and is sent back
the predicted noise, so callers choose how the U-Net runs and may watch every step (the figures
draw x_t and the predicted x_0). The server does not run this loop: its engine (`stepper.py`)
advances images of many requests at different timesteps in one call. Both are built from the
same parts (`timesteps`, `Diffusion.step`, `guide`, `SeededNoise`) and give the same bytes for
the same seeds (tests/test_scheduler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch

from .diffusion import Diffusion, guide
from .noise import SeededNoise


@dataclass(frozen=True)
class UNetCall:
    """One U-Net evaluation: x [B, C, H, W], per-sample t [B] (float) and labels [B] (or None)."""

    x: torch.Tensor
    t: torch.Tensor
    labels: torch.Tensor | None


@dataclass(frozen=True)
class Batch:
    """Images that share a step count; everything else may differ per image."""

    seeds: torch.Tensor  # [B] int64
    steps: int
    eta: torch.Tensor  # [B] float: 1 = DDPM ancestral, 0 = deterministic DDIM
    labels: torch.Tensor | None = None  # [B] int64; `num_classes` = unconditional
    guidance: torch.Tensor | None = None  # [B] float; None or all-ones = no guidance


def sampler_eta(sampler: str, eta: float | None = None) -> float:
    """The eta that makes `denoise` run the named sampler: DDPM is DDIM with eta = 1."""
    if sampler == "ddpm":
        if eta is not None and eta != 1.0:
            raise ValueError("ETA applies to the ddim sampler only (ddpm is ddim with eta = 1)")
        return 1.0
    if sampler == "ddim":
        eta = 0.0 if eta is None else eta
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"ETA must be in [0, 1], got {eta}")
        return eta
    raise ValueError(f"unknown sampler {sampler!r}; choose ddpm or ddim")


def timesteps(num_train_steps: int, steps: int) -> list[int]:
    """`steps` timesteps evenly spaced over [0, T-1], descending, always including T-1 and 0."""
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must be in [1, {num_train_steps}], got {steps}")
    if steps == 1:
        return [num_train_steps - 1]
    return np.unique(np.linspace(0, num_train_steps - 1, steps).round().astype(np.int64))[::-1].tolist()


Trajectory = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Observer called after each step with (t, x_{t_prev}, predicted x_0), e.g. to draw the denoising."""


def denoise(
    batch: Batch,
    diffusion: Diffusion,
    noise: SeededNoise,
    null_label: int,
    observe: Trajectory | None = None,
) -> Generator[UNetCall, torch.Tensor, torch.Tensor]:
    """The reverse process from x_T to x_0 in [-1, 1]; yields U-Net calls, returns the images."""
    seeds = batch.seeds
    x = noise(seeds, 0)
    guided = batch.guidance is not None and batch.labels is not None and bool((batch.guidance != 1).any())
    stochastic = bool((batch.eta > 0).any())
    schedule = timesteps(diffusion.timesteps, batch.steps)
    for i, t in enumerate(schedule):
        t_prev = schedule[i + 1] if i + 1 < len(schedule) else -1
        t_batch = torch.full_like(seeds, t)
        if guided:
            unconditional = torch.full_like(batch.labels, null_label)
            both = yield UNetCall(
                torch.cat([x, x]), torch.cat([t_batch, t_batch]).float(), torch.cat([batch.labels, unconditional])
            )
            eps = guide(*both.chunk(2), batch.guidance)
        else:
            eps = yield UNetCall(x, t_batch.float(), batch.labels)
        z = noise(seeds, t + 1) if stochastic and t_prev >= 0 else None
        x, x0 = diffusion.step(x, eps.to(x.dtype), t_batch, torch.full_like(seeds, t_prev), batch.eta, z)
        if observe is not None:
            observe(t, x, x0)
    return x


def run(loop: Generator[UNetCall, torch.Tensor, torch.Tensor], unet: Callable[[UNetCall], torch.Tensor]) -> torch.Tensor:
    """Drive a loop to completion with a synchronous U-Net."""
    try:
        call = next(loop)
        while True:
            call = loop.send(unet(call))
    except StopIteration as done:
        return done.value


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> [B, H, W, C] uint8, the wire format of IMAGE."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
