"""Export: every artifact format and precision against the PyTorch U-Net it came from.

Calibration reads the real MNIST test set through conftest's `mnist_dir` (../shared/data/mnist).

The U-Nets here get fresh random weights in every layer: a new U-Net's output convolution starts at
zero, which would make every comparison trivially exact.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ddpm_triton.export.onnx import export_onnx
from ddpm_triton.export.quantize import calibration_inputs, quantize_int8
from ddpm_triton.export.tensorrt import TensorRTUnavailable, build_engine, tensorrt_available
from ddpm_triton.export.torchscript import export_torchscript
from ddpm_triton.export.verify import parity
from torch import nn

from ddpm_triton.artifacts import INPUT_LABEL, INPUT_T, INPUT_X, OUTPUT_EPS
from ddpm_triton.config import ModelConfig, preset
from ddpm_triton.runners import load_runner
from ddpm_triton.unet import UNet

FP32_BOUND = 1e-4  # the same float32 arithmetic, reordered
CROSS_FORMAT_BOUND = 1e-3  # two independent runtimes, each within FP32_BOUND of PyTorch
FP16_BOUND = 1e-2  # half precision keeps ~3 decimal digits; a U-Net this size measures about 1e-3
INT8_BOUND = 0.25  # 8-bit symmetric activations through ~60 quantized layers


def random_unet(config: ModelConfig, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(config.unet)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()
    return model.eval()


def batch(config: ModelConfig, size: int, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    unet = config.unet
    feed = {
        INPUT_X: torch.randn(size, unet.in_channels, unet.image_size, unet.image_size, generator=generator),
        INPUT_T: torch.randint(0, config.diffusion.timesteps, (size,), generator=generator).float(),
    }
    if unet.conditional:
        feed[INPUT_LABEL] = torch.randint(0, unet.num_classes + 1, (size,), generator=generator, dtype=torch.int32)
    return feed


def inputs_for(config: ModelConfig) -> list[dict[str, torch.Tensor]]:
    """Batches of 1 and 5 after tracing with 2: the batch dimension must really be dynamic."""
    return [batch(config, 1, seed=1), batch(config, 5, seed=2)]


CONFIGS = {
    # The shipped model: int8's bound is stated for it, and it is the one class-conditional case.
    "conditional": preset("mnist"),
    "unconditional": preset("tiny", num_classes=0),
}


@dataclass(frozen=True)
class Exported:
    config: ModelConfig
    model: UNet
    torchscript: Path
    onnx: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    """fp32 TorchScript and ONNX of each model, written once for the module (ONNX export takes seconds)."""
    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            config, out = CONFIGS[name], tmp_path_factory.mktemp(name)
            model = random_unet(config)
            torchscript = export_torchscript(model, out / "model.pt", "fp32")
            cache[name] = Exported(config, model, torchscript, export_onnx(model, out / "model.onnx", "fp32"))
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_fp32_matches_pytorch_at_any_batch_size(fmt: str, name: str, exported: Callable[[str], Exported]) -> None:
    art = exported(name)
    result = parity(art.model, load_runner(getattr(art, fmt)), inputs_for(art.config))
    assert result.relative_error < FP32_BOUND, result


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_onnx_interface(name: str, exported: Callable[[str], Exported]) -> None:
    art = exported(name)
    graph = onnx.load(str(art.onnx)).graph
    names = [INPUT_X, INPUT_T] + ([INPUT_LABEL] if art.config.unet.conditional else [])
    assert [i.name for i in graph.input] == names
    assert [o.name for o in graph.output] == [OUTPUT_EPS]
    for tensor in [*graph.input, *graph.output]:
        assert tensor.type.tensor_type.shape.dim[0].dim_param, f"{tensor.name} has a fixed batch size"
    types = {i.name: i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]}
    assert types.pop(INPUT_LABEL, onnx.TensorProto.INT32) == onnx.TensorProto.INT32
    assert set(types.values()) == {onnx.TensorProto.FLOAT}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torchscript_and_onnx_agree_when_loaded_independently(name: str, exported: Callable[[str], Exported]) -> None:
    art = exported(name)
    feed = batch(art.config, 5)
    with torch.inference_mode():
        from_torchscript = torch.jit.load(str(art.torchscript))(*feed.values()).numpy()
    session = ort.InferenceSession(str(art.onnx), providers=["CPUExecutionProvider"])
    (from_onnx,) = session.run(None, {name: tensor.numpy() for name, tensor in feed.items()})
    relative = np.linalg.norm(from_onnx - from_torchscript) / np.linalg.norm(from_torchscript)
    assert relative < CROSS_FORMAT_BOUND


@pytest.mark.parametrize("num_classes", [10, 0])
def test_fp16_torchscript_is_bounded(num_classes: int, tmp_path: Path) -> None:
    """On 'tiny' models: half precision on a CPU runs about ten times slower than float32."""
    config = preset("tiny", num_classes=num_classes)
    model = random_unet(config)
    runner = load_runner(export_torchscript(model, tmp_path / "model.pt", "fp16"))
    assert runner(*batch(config, 2).values()).dtype == torch.float32  # the interface stays float32
    result = parity(model, runner, inputs_for(config))
    assert result.relative_error < FP16_BOUND, result


def test_torchscript_is_not_tied_to_the_device_it_was_traced_on(exported: Callable[[str], Exported]) -> None:
    graph = str(torch.jit.load(str(exported("unconditional").torchscript)).inlined_graph)
    assert "Device = prim::Constant" not in graph


def test_fp16_onnx_is_bounded(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    art = exported("unconditional")
    path = export_onnx(art.model, tmp_path / "model.onnx", "fp16")
    graph = onnx.load(str(path)).graph
    assert {t.type.tensor_type.elem_type for t in [*graph.input, *graph.output]} == {onnx.TensorProto.FLOAT}
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    result = parity(art.model, load_runner(path), inputs_for(art.config))
    assert result.relative_error < FP16_BOUND, result


def test_int8_rejected_by_the_traced_writers(tmp_path: Path) -> None:
    model = random_unet(CONFIGS["unconditional"])
    with pytest.raises(ValueError, match="int8"):
        export_torchscript(model, tmp_path / "model.pt", "int8")


# ---- int8 -------------------------------------------------------------------------------------------


def test_calibration_inputs_are_noised_real_images(mnist_dir: Path) -> None:
    config = CONFIGS["conditional"]
    feeds = calibration_inputs(config, mnist_dir, count=64, seed=0)
    assert len(feeds) == 64
    assert all(feed[INPUT_X].shape == (1, 1, 28, 28) and feed[INPUT_X].dtype == np.float32 for feed in feeds)
    assert all(feed[INPUT_T].dtype == np.float32 and feed[INPUT_LABEL].dtype == np.int32 for feed in feeds)
    labels = np.concatenate([feed[INPUT_LABEL] for feed in feeds])
    assert labels.min() >= 0 and labels.max() == config.unet.num_classes  # the null label is calibrated too
    same = calibration_inputs(config, mnist_dir, count=64, seed=0)
    assert all(np.array_equal(a[INPUT_X], b[INPUT_X]) for a, b in zip(feeds, same))
    assert INPUT_LABEL not in calibration_inputs(CONFIGS["unconditional"], mnist_dir, count=2, seed=0)[0]


def test_int8_qdq_onnx_of_the_shipped_model_is_within_bound_of_fp32(
    mnist_dir: Path, exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    """On the 'mnist' preset with random weights (0.16 measured; 0.05 once briefly trained). 'tiny' is
    no guide: its 16-channel layers with random weights measure about 0.3."""
    art = exported("conditional")
    calibration = calibration_inputs(art.config, mnist_dir, count=32, seed=0)
    int8 = quantize_int8(art.onnx, tmp_path / "int8.onnx", calibration)

    graph = onnx.load(str(int8)).graph
    zero_points = [onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(not z.any() for z in zero_points)  # symmetric: what TensorRT accepts

    held_out = calibration_inputs(art.config, mnist_dir, count=16, seed=1)
    feed = {name: np.concatenate([f[name] for f in held_out]) for name in held_out[0]}
    (reference,) = ort.InferenceSession(str(art.onnx), providers=["CPUExecutionProvider"]).run(None, feed)
    (quantized,) = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, feed)
    relative = np.linalg.norm(quantized - reference) / np.linalg.norm(reference)
    assert relative < INT8_BOUND


# ---- TensorRT ---------------------------------------------------------------------------------------


def test_tensorrt_engine_builds(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    if not tensorrt_available():
        pytest.skip("TensorRT is not installed: engines build only inside NVIDIA's TensorRT/Triton containers")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but there is no CUDA device to build for")
    art = exported("conditional")
    plan = build_engine(art.onnx, tmp_path / "model.plan", "fp32", max_batch_size=8, opt_batch_size=4)
    reference = copy.deepcopy(art.model).cuda()  # the cached CPU model stays where other tests expect it
    result = parity(reference, load_runner(plan, device="cuda"), inputs_for(art.config))
    assert result.relative_error < 1e-2, result  # TensorRT may pick TF32 kernels


def test_plan_without_tensorrt_names_tensorrt(tmp_path: Path) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed here, so .plan files load")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(TensorRTUnavailable, match="TensorRT"):
        load_runner(plan)
    with pytest.raises(TensorRTUnavailable, match="TensorRT"):
        build_engine(tmp_path / "model.onnx", plan, "fp32", max_batch_size=8, opt_batch_size=4)


# ---- runners ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_runner_checks_labels_against_the_artifact(name: str, exported: Callable[[str], Exported]) -> None:
    art = exported(name)
    feed = batch(art.config, 2)
    wrong = None if art.config.unet.conditional else torch.zeros(2, dtype=torch.int32)
    for path in (art.torchscript, art.onnx):
        runner = load_runner(path)
        assert runner.conditional == art.config.unet.conditional
        with pytest.raises(ValueError, match="conditional"):
            runner(feed[INPUT_X], feed[INPUT_T], wrong)


def test_load_runner_rejects_other_files(tmp_path: Path) -> None:
    pickle = tmp_path / "model.pth"
    pickle.write_bytes(b"")
    with pytest.raises(ValueError, match="not a U-Net artifact"):
        load_runner(pickle)
    broken = tmp_path / "ema.safetensors"
    broken.write_bytes(b"")
    with pytest.raises(ValueError, match="ema.safetensors is not a readable safetensors file"):
        load_runner(broken)
    with pytest.raises(FileNotFoundError):
        load_runner(tmp_path / "missing.onnx")


def test_torchscript_forward_arguments_are_the_config_input_names(tmp_path: Path) -> None:
    """Triton's LibTorch backend (container configs) binds inputs to forward() arguments by name."""
    model = random_unet(CONFIGS["conditional"])
    module = torch.jit.load(str(export_torchscript(model, tmp_path / "model.pt", "fp32")))
    names = [i.debugName().split(".")[0] for i in module.graph.inputs()][1:]
    assert names == [INPUT_X, INPUT_T, INPUT_LABEL]
