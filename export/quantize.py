"""Int8 U-Nets: a QDQ ONNX model calibrated on real, noised images with onnxruntime.

The QDQ form (QuantizeLinear/DequantizeLinear pairs around float ops) runs under onnxruntime on any
CPU, so its error is measured where it is made, and it is the explicit-quantization input that
TensorRT builds an int8 engine from, so the same scales reach the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from ddpm_triton.artifacts import INPUT_LABEL, INPUT_T, INPUT_X
from ddpm_triton.config import ModelConfig, UNetConfig
from ddpm_triton.data import load_dataset, to_model_range
from ddpm_triton.diffusion import Diffusion

DATASET_KINDS = ("mnist", "cifar10", "folder")
"""Tried in this order on a calibration folder: idx files, CIFAR-10 batches, then loose images."""

QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
"""Only the ops with int8 kernels worth having. Quantizing the elementwise ops, norms and softmax
around them would add rounding at every residual add for no speed on TensorRT, which fuses those."""


def _real_images(data_dir: Path, config: UNetConfig) -> np.ndarray:
    """Every image of the dataset in `data_dir`, float32 [N, C, H, W] in [-1, 1]."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"no calibration images: --data-dir {data_dir} does not exist")
    problems = []
    for kind in DATASET_KINDS:
        try:
            dataset = load_dataset(kind, data_dir, config.image_size, config.in_channels)
            break
        except FileNotFoundError as err:
            problems.append(str(err))
    else:
        raise FileNotFoundError(f"no calibration images in {data_dir}: " + "; ".join(problems))
    images = to_model_range(dataset.images)
    expected = (config.in_channels, config.image_size, config.image_size)
    if images.shape[1:] != expected:
        raise ValueError(f"images in {data_dir} are {images.shape[1:]} (C, H, W); the model takes {expected}")
    return images


def calibration_inputs(model_config: ModelConfig, data_dir: Path, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`count` single-image feeds: real images noised to random timesteps, as the U-Net sees while sampling.

    Activation ranges depend on the noise level, so calibrating on clean images or pure noise alone
    would clip the other end. Conditional models get random labels, the null label included, because
    guidance runs every step with both.
    """
    if count < 1:
        raise ValueError(f"calibration needs at least one input, not {count}")
    unet = model_config.unet
    rng = np.random.default_rng(seed)
    images = _real_images(data_dir, unet)
    x0 = torch.from_numpy(images[rng.choice(len(images), size=count, replace=count > len(images))])
    t = rng.integers(0, model_config.diffusion.timesteps, size=count)
    noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
    xt = Diffusion(model_config.diffusion).q_sample(x0, torch.from_numpy(t), noise).numpy()
    feeds = [{INPUT_X: xt[i : i + 1], INPUT_T: t[i : i + 1].astype(np.float32)} for i in range(count)]
    if unet.conditional:
        labels = rng.integers(0, unet.num_classes + 1, size=count).astype(np.int32)
        for i, feed in enumerate(feeds):
            feed[INPUT_LABEL] = labels[i : i + 1]
    return feeds


def _output_conv(model_path: Path) -> str:
    """The name of the convolution that writes EPS: the last Conv of the (topologically sorted) graph.

    It is kept in float: its rounding would land on the prediction with no later layer to absorb
    it, and at C output channels it is a negligible share of the U-Net's work.
    """
    convs = [node.name for node in onnx.load(str(model_path)).graph.node if node.op_type == "Conv"]
    if not convs:
        raise ValueError(f"{model_path} has no Conv node: it is not an exported U-Net")
    return convs[-1]


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(fp32_onnx: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """Write the int8 QDQ model of `fp32_onnx`, with activation ranges from `calibration`."""
    if not calibration:
        raise ValueError("int8 quantization needs calibration inputs; got none")
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32_onnx),
        str(out),
        _Feeds(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        nodes_to_exclude=[_output_conv(fp32_onnx)],
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        # Symmetric (zero point 0) because TensorRT's explicit quantization accepts nothing else. It
        # costs accuracy on the one-sided SiLU outputs that feed most convolutions: 0.036 against
        # asymmetric's 0.031 on a briefly trained 'mnist' U-Net, 0.19 against 0.05 with random weights.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return out
