"""ONNX artifacts: what onnxruntime and Triton's ONNX Runtime backend run, and TensorRT's input.

Exported with torch.onnx's dynamo exporter (`torch.export` underneath), the default since torch 2.9.
The legacy TorchScript-based exporter still works in torch 2.13 and runs about 15x faster (under a
second against ~12 s for the 'tiny' U-Net), but it is deprecated, and its graph has about twice the
nodes (unfolded constants, Identity and Sqrt/Div chains) for the QDQ quantizer and TensorRT's parser
to wade through; the dynamo graph comes constant-folded by onnxscript's optimizer. Both give a
truly dynamic batch dimension.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from ddpm_triton.artifacts import INPUT_LABEL, INPUT_T, INPUT_X, OUTPUT_EPS
from ddpm_triton.unet import UNet

from ddpm_triton.precision import PrecisionWrapper

from .interface import example_inputs

MIN_OPSET = 17
"""The oldest opset verified here. 18, the default, is what the exporter writes natively (GroupNorm
becomes InstanceNormalization, which every runtime here supports); 17 is converted down cleanly."""


def export_onnx(model: UNet, path: Path, precision: str, opset: int = 18) -> Path:
    """Write `model` as one self-contained ONNX file with a dynamic batch dimension."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old for this exporter; use {MIN_OPSET} or newer")
    wrapper = PrecisionWrapper(model, precision)
    inputs = example_inputs(model)
    names = [INPUT_X, INPUT_T, INPUT_LABEL][: len(inputs)]
    # Name the batch axis once: the other inputs share its symbol, and naming it again only warns.
    batch = [{0: torch.export.Dim("batch", min=1)}] + [{0: torch.export.Dim.DYNAMIC}] * (len(inputs) - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapper,
        inputs,
        str(path),
        input_names=names,
        output_names=[OUTPUT_EPS],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=tuple(batch),
        external_data=False,
        optimize=True,
        verbose=False,
    )
    onnx.checker.check_model(str(path), full_check=True)
    return path
