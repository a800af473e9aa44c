"""The exported U-Net: its tensor names, formats, precisions and where each artifact lives.

Every artifact, whatever its format or precision, has the same float32 interface, so the `ddpm`
model can switch between them by name alone:

    X [B, C, H, W] float32, T [B] float32 (timestep per sample), LABEL [B] int32 (conditional only)
    -> EPS [B, C, H, W] float32

Lower precisions cast inside the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_X = "X"
INPUT_T = "T"
INPUT_LABEL = "LABEL"
OUTPUT_EPS = "EPS"

FORMATS = ("onnx", "torchscript", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
FILENAMES = {"onnx": "model.onnx", "torchscript": "model.pt", "tensorrt": "model.plan"}
NATIVE_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch", "tensorrt": "tensorrt_plan"}

# Which precisions each format can hold: int8 TorchScript has no portable runtime; int8 ONNX is the
# calibrated QDQ model (onnxruntime here, and TensorRT's explicit-quantization input).
SUPPORTED = {
    "onnx": ("fp32", "fp16", "int8"),
    "torchscript": ("fp32", "fp16"),
    "tensorrt": ("fp32", "fp16", "int8"),
}


@dataclass(frozen=True)
class Variant:
    format: str
    precision: str

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.precision not in SUPPORTED[self.format]:
            raise ValueError(
                f"{self.format} has no {self.precision} variant; it supports {', '.join(SUPPORTED[self.format])}"
            )

    @property
    def model_name(self) -> str:
        """The Triton model name, e.g. unet_onnx_fp32."""
        return f"unet_{self.format}_{self.precision}"

    @property
    def filename(self) -> str:
        return FILENAMES[self.format]

    @classmethod
    def from_model_name(cls, name: str) -> Variant:
        parts = name.split("_")
        if len(parts) != 3 or parts[0] != "unet":
            raise ValueError(f"{name!r} is not a U-Net model name of the form unet_<format>_<precision>")
        return cls(parts[1], parts[2])
