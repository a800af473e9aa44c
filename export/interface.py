"""The float32 interface every U-Net artifact presents, as a module the writers trace or export.

TorchScript and ONNX must agree on what an artifact looks like from outside (float32 X and T, int32
LABEL, float32 EPS) whatever precision it computes in, so both writers trace this one wrapper rather
than each casting in its own way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ddpm_triton.unet import UNet

COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TRACE_BATCH = 2
"""Example batch size for tracing: not 1, which tracers may treat as a broadcastable constant."""


def _cast_inputs_to(dtype: torch.dtype) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(a.to(dtype) for a in args)

    return hook


class PrecisionWrapper(nn.Module):
    """A copy of the U-Net in the artifact's compute precision, behind float32 inputs and output.

    The sinusoidal timestep embedding stays float32 (sin/cos of timesteps near 1000 lose most of
    their digits in half precision); it is cast where it enters the first reduced-precision layer.
    """

    def __init__(self, model: UNet, precision: str) -> None:
        super().__init__()
        if precision not in COMPUTE_DTYPES:
            raise ValueError(
                f"precision {precision!r} cannot be traced; choose one of {', '.join(COMPUTE_DTYPES)} "
                "(int8 is quantized from the fp32 ONNX model)"
            )
        self.dtype = COMPUTE_DTYPES[precision]
        self.unet = copy.deepcopy(model).to(self.dtype).requires_grad_(False)
        if self.dtype != torch.float32:
            self.unet.time_embed.register_forward_pre_hook(_cast_inputs_to(self.dtype))
        self.eval()

    # The argument names are the artifact's input names: Triton's LibTorch backend binds config
    # inputs to TorchScript by forward() argument name, so they must read X, T, LABEL.
    def forward(self, X: torch.Tensor, T: torch.Tensor, LABEL: torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803
        return self.unet(X.to(self.dtype), T, LABEL).float()


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
