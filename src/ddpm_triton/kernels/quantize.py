"""FP8 (e4m3) weights for tensor-core products: scaled so that their largest magnitude maps to 448."""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # the largest finite float8_e4m3fn


def _to_fp8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (values / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous()


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A [rows, K] weight matrix as FP8 and fp32 per-row scales: a row is one output channel, so
    its scale multiplies the accumulator once, in a kernel's epilogue."""
    if matrix.dim() != 2:
        raise ValueError(f"quantize_rows takes a [rows, K] matrix, not {tuple(matrix.shape)}")
    matrix = matrix.detach().float()
    scale = matrix.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / FP8_MAX
    return _to_fp8(matrix, scale[:, None]), scale.contiguous()


def quantize_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight tensor as FP8 and one fp32 scale (a 0-d tensor), for matmuls that scale by tensor."""
    weight = weight.detach().float()
    scale = weight.abs().amax().clamp_min(torch.finfo(torch.float32).tiny) / FP8_MAX
    return _to_fp8(weight, scale), scale
