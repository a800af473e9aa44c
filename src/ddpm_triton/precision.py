"""A U-Net in a reduced compute precision behind the float32 interface every runner presents.

Exported artifacts (TorchScript, ONNX) trace this wrapper and the server's in-process fast path
runs it directly, so float32 X and T, int32 LABEL and float32 EPS mean the same thing everywhere,
whatever precision the convolutions compute in.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .unet import UNet

COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float16}
# fp8 is fp16 with the residual blocks' convolutions in FP8 (`fp8.py`): Triton kernels, so it runs from
# live PyTorch weights only and is not an export precision.


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
                f"precision {precision!r} is not a compute precision; choose one of {', '.join(COMPUTE_DTYPES)} "
                "(int8 is quantized from the fp32 ONNX model)"
            )
        self.dtype = COMPUTE_DTYPES[precision]
        self.unet = copy.deepcopy(model).to(self.dtype).requires_grad_(False)
        if self.dtype != torch.float32:
            self.unet.time_embed.register_forward_pre_hook(_cast_inputs_to(self.dtype))
        if precision == "fp8":
            from .fp8 import use_fp8_layers  # imports triton: only where fp8 is asked for

            use_fp8_layers(self.unet)
        self.eval()

    # The argument names are the artifact's input names: Triton's LibTorch backend binds config
    # inputs to TorchScript by forward() argument name, so they must read X, T, LABEL.
    def forward(self, X: torch.Tensor, T: torch.Tensor, LABEL: torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803
        return self.unet(X.to(self.dtype), T, LABEL).float()
