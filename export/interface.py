"""Example inputs of the artifact interface, for the writers that trace or export a U-Net.

The interface itself (float32 X and T, int32 LABEL, float32 EPS) is `ddpm_triton.precision`'s
wrapper, which TorchScript and ONNX both trace.
"""

from __future__ import annotations

import torch

from ddpm_triton.unet import UNet

TRACE_BATCH = 2
"""Example batch size for tracing: not 1, which tracers may treat as a broadcastable constant."""


def example_inputs(model: UNet, batch_size: int = TRACE_BATCH) -> tuple[torch.Tensor, ...]:
    """(X, T[, LABEL]) on the model's device, with the dtypes of the artifact interface."""
    config = model.config
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, config.in_channels, config.image_size, config.image_size, generator=generator)
    t = torch.linspace(0, 999, batch_size)
    if not config.conditional:
        return x.to(device), t.to(device)
    label = torch.arange(batch_size, dtype=torch.int32) % (config.num_classes + 1)
    return x.to(device), t.to(device), label.to(device)
