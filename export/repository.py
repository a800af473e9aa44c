"""checkpoint -> Triton model repository: U-Net artifacts, their parity with PyTorch, and every config.

The repository is fully described by (checkpoint, variants, serving options): this module is the
only writer of `model_repository/`, for the local server, the GPU server and the container alike.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from ddpm_client import contract

from ddpm_triton.artifacts import Variant
from ddpm_triton.checkpoint import load_model
from ddpm_triton.checkpoint import resolve as checkpoint_file
from ddpm_triton.config import ModelConfig
from ddpm_triton.runners import load_runner
from ddpm_triton.unet import UNet

from . import pbtxt
from .configs import TARGETS, WEIGHTS, ServingOptions, choose_unet, ddpm_config, unet_config
from .onnx import export_onnx
from .quantize import calibration_inputs, quantize_int8
from .tensorrt import TensorRTUnavailable, build_engine
from .torchscript import export_torchscript
from .verify import Parity, parity

ENTRY_POINTS = {
    contract.MODEL_NAME: "ddpm_triton.serving.ddpm_model",
    "unet": "ddpm_triton.serving.unet_model",
}


@dataclass(frozen=True)
class ArtifactReport:
    variant: Variant
    path: Path | None
    parity: Parity | None
    skipped: str | None = None  # why the artifact was not built (TensorRT absent)


def write_model_py(model_dir: Path, module: str) -> None:
    """The Python backend loads `1/model.py`; ours only re-exports the class from the installed package."""
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.py").write_text(
        f'"""Triton Python-backend entry point; the model is {module}.TritonPythonModel."""\n\n'
        f"from {module} import TritonPythonModel  # noqa: F401\n"
    )


def write_configs(repository: Path, model: ModelConfig, variants: list[Variant], options: ServingOptions) -> None:
    """config.pbtxt and configs/<target>.pbtxt of `ddpm` and of every U-Net, plus their model.py."""
    for target, filename in TARGETS.items():
        unet = choose_unet(target, variants, options)
        configs = {contract.MODEL_NAME: ddpm_config(model, unet, options, target)}
        configs.update({v.model_name: unet_config(model, v, options, target) for v in variants})
        for name, config in configs.items():
            path = repository / name / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(pbtxt.render(config))
    write_model_py(repository / contract.MODEL_NAME, ENTRY_POINTS[contract.MODEL_NAME])
    for variant in variants:
        write_model_py(repository / variant.model_name, ENTRY_POINTS["unet"])


def verification_inputs(model: ModelConfig, batch: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Fixed random U-Net inputs: noisy images, timesteps across the schedule, labels incl. the null label."""
    g = torch.Generator().manual_seed(seed)
    u = model.unet
    x = torch.randn(batch, u.in_channels, u.image_size, u.image_size, generator=g)
    t = torch.linspace(0, model.diffusion.timesteps - 1, batch).round()
    if not u.conditional:
        return [(x, t)]
    return [(x, t, torch.randint(0, u.num_classes + 1, (batch,), generator=g, dtype=torch.int32))]


class ArtifactBuilder:
    """Writes each variant's file, deriving int8 and TensorRT from the fp32 ONNX it builds once."""

    def __init__(self, model: UNet, config: ModelConfig, workdir: Path, data_dir: Path | None, max_batch: int):
        self.model, self.config, self.workdir = model, config, workdir
        self.data_dir, self.max_batch = data_dir, max_batch
        self._onnx: dict[str, Path] = {}

    def onnx(self, precision: str) -> Path:
        if precision not in self._onnx:
            path = self.workdir / f"{precision}.onnx"
            if precision == "int8":
                if self.data_dir is None:
                    raise ValueError("int8 needs calibration images: pass --data-dir")
                calibration = calibration_inputs(self.config, self.data_dir, count=64, seed=0)
                quantize_int8(self.onnx("fp32"), path, calibration)
            else:
                export_onnx(self.model, path, precision)
            self._onnx[precision] = path
        return self._onnx[precision]

    def build(self, variant: Variant, path: Path) -> None:
        """Write the artifact to `path`; nothing appears there unless the build succeeds."""
        staged = self.workdir / variant.model_name / variant.filename
        staged.parent.mkdir(parents=True, exist_ok=True)
        if variant.format == "torchscript":
            export_torchscript(self.model, staged, variant.precision)
        elif variant.format == "onnx":
            shutil.copyfile(self.onnx(variant.precision), staged)
        else:
            # Strongly typed engines take their precision from the ONNX: fp16 from fp16, int8 from QDQ.
            source = self.onnx(variant.precision)
            build_engine(source, staged, variant.precision, self.max_batch, opt_batch_size=max(1, self.max_batch // 2))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(staged, path)


def export_repository(
    checkpoint: Path,
    repository: Path,
    variants: list[Variant],
    options: ServingOptions,
    data_dir: Path | None = None,
    on_artifact: Callable[[ArtifactReport], None] = lambda report: None,
) -> list[ArtifactReport]:
    """Build, verify and configure every variant; TensorRT variants are skipped (and reported) without TensorRT."""
    model, config = load_model(checkpoint)
    reference_inputs = verification_inputs(config)
    reports, built = [], []
    with tempfile.TemporaryDirectory() as tmp:
        builder = ArtifactBuilder(model, config, Path(tmp), data_dir, 2 * options.max_step_batch)
        for variant in variants:
            path = repository / variant.model_name / "1" / variant.filename
            try:
                builder.build(variant, path)
            except TensorRTUnavailable as err:
                report = ArtifactReport(variant, None, None, skipped=str(err))
            else:
                report = ArtifactReport(variant, path, parity(model, load_runner(path), reference_inputs))
                built.append(variant)
            reports.append(report)
            on_artifact(report)
    if not built:
        raise ValueError("no U-Net artifact could be built; the repository would have nothing to serve")
    weights = repository / contract.MODEL_NAME / "1" / WEIGHTS
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint_file(checkpoint), weights)
    write_configs(repository, config, built, options)
    return reports
