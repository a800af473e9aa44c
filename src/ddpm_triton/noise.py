"""Per-image Gaussian noise from a counter-based hash: noise(seed, stream, element).

Why not `torch.Generator`: one generator per image costs a kernel launch per image per step, and
its stream differs between CPU and CUDA. Hashing (seed, stream, element index) with integer ops
gives the same bits on every device, for the whole batch in a handful of vectorised ops, and an
image's noise cannot depend on which batch it is drawn in. `stream` separates the draws of one
image: 0 is x_T, `t + 1` the noise added when stepping away from timestep t.

All arithmetic keeps values below 2**32 and multiplies by constants below 2**31, so int64 never
overflows and every backend (CPU, CUDA, ONNX-free) computes identical integers.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39)  # odd, < 2**31
_STREAM_SALT = 0x165667B1


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (xorshift-multiply rounds) on int64 tensors holding uint32 values."""
    for i, m in enumerate(_MULTIPLIERS):
        x = x ^ (x >> (16 if i % 2 == 0 else 15))
        x = (x * m) & _MASK32
    return x ^ (x >> 16)


def image_keys(seeds: torch.Tensor, streams: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per image from its int64 seed and the stream number, [B] -> [B]."""
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    key = _mix32(lo ^ _mix32(hi))
    return _mix32(key ^ _mix32((streams + _STREAM_SALT) & _MASK32))


class SeededNoise:
    """Standard normal noise of one per-image shape, keyed by per-image seeds.

    The per-element hashes of the counters do not depend on the seed, so they are computed once
    per shape and device; each draw then costs one key per image plus two mixes per element.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        self.shape = tuple(shape)
        numel = math.prod(self.shape)
        counters = torch.arange(2 * numel, dtype=torch.int64, device=device)
        self._counter_hash = _mix32(counters).view(2, numel)

    def __call__(self, seeds: torch.Tensor, streams: torch.Tensor | int) -> torch.Tensor:
        """Noise [B, *shape] (float32) for int64 seeds [B] and stream numbers (scalar or [B])."""
        streams = torch.as_tensor(streams, dtype=torch.int64, device=seeds.device).expand_as(seeds)
        keys = image_keys(seeds.to(torch.int64), streams)[:, None, None]  # [B, 1, 1]
        bits = _mix32(self._counter_hash[None] ^ keys)  # [B, 2, numel]
        # 24 high bits -> uniform in (0, 1), exact in float32, never 0 so the log is finite.
        u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
        normal = torch.sqrt(-2.0 * torch.log(u[:, 0])) * torch.cos((2.0 * math.pi) * u[:, 1])  # Box-Muller
        return normal.view(seeds.shape[0], *self.shape)
