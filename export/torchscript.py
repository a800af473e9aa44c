"""TorchScript artifacts: what Triton's libtorch backend and `torch.jit.load` run.

Traced, not scripted: the U-Net's forward is plain tensor code, and tracing records the batch size
symbolically through `x.shape`, so one trace serves every batch size. The trace bakes in the device
it ran on (the timestep embedding builds its frequencies there), so trace a model that sits on the
device the artifact will be served from.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ddpm_triton.unet import UNet

from ddpm_triton.precision import PrecisionWrapper

from .interface import example_inputs


def export_torchscript(model: UNet, path: Path, precision: str) -> Path:
    """Write `model` as a traced TorchScript file with the float32 X/T[/LABEL] -> EPS interface."""
    wrapper = PrecisionWrapper(model, precision)
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is the format Triton's libtorch backend loads; its deprecation changes nothing here.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated")
        # GroupNorm's "more than one value per channel" check reads a shape as a bool; it only guards training.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        # No check_trace: export compares every artifact's output with PyTorch's, which that check would
        # only repeat (at the cost of two more forward passes, slow ones in fp16 on a CPU).
        traced = torch.jit.trace(wrapper, example_inputs(model), check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path
