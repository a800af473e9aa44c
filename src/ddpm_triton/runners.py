"""Running an exported U-Net, whatever its format, behind one call: (x, t, labels) -> eps.

The Triton Python-backend U-Net model and export's verification both load artifacts through here,
so the error export reports is the error of the code path the server runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import ModuleType

import onnxruntime as ort
import torch
from torch import nn

from .artifacts import INPUT_LABEL, INPUT_T, INPUT_X, OUTPUT_EPS
from .checkpoint import load_model
from .fastpath import use_fast_layers
from .precision import PrecisionWrapper

TENSORRT_CONTAINERS = "nvcr.io/nvidia/tensorrt, nvcr.io/nvidia/pytorch or nvcr.io/nvidia/tritonserver"


class TensorRTUnavailable(RuntimeError):
    """The `tensorrt` Python package is missing: .plan engines can be neither built nor run here."""


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or TensorRTUnavailable saying where to find it.

    PyPI carries no installable TensorRT builder for these machines, so its absence is an expected
    state that deserves a plain instruction rather than an ImportError.
    """
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailable(
            "TensorRT is not installed here (no `tensorrt` Python package); build and run .plan engines "
            f"inside NVIDIA's TensorRT, PyTorch or Triton container ({TENSORRT_CONTAINERS})"
        ) from err
    return tensorrt


class UNetRunner(ABC):
    """An artifact loaded for inference: float32 X and T, int32 LABEL in; float32 EPS out, on `device`."""

    def __init__(self, path: Path, device: torch.device, conditional: bool) -> None:
        self.path = path
        self.device = device
        self.conditional = conditional

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional and labels is None:
            raise ValueError(f"{self.path} is class-conditional: pass labels (num_classes for the null label)")
        if not self.conditional and labels is not None:
            raise ValueError(f"{self.path} is unconditional: it takes no labels")
        inputs = {
            INPUT_X: x.to(self.device, torch.float32).contiguous(),
            INPUT_T: t.to(self.device, torch.float32).contiguous(),
        }
        if labels is not None:
            inputs[INPUT_LABEL] = labels.to(self.device, torch.int32).contiguous()
        return self._run(inputs)

    @abstractmethod
    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """EPS for inputs keyed by artifact tensor name, already in the interface dtypes and on `device`."""


class TorchScriptRunner(UNetRunner):
    def __init__(self, path: Path, device: torch.device, num_threads: int | None) -> None:
        if num_threads is not None and device.type == "cpu":
            torch.set_num_threads(num_threads)  # torch has one intra-op pool per process
        module = torch.jit.load(str(path), map_location=device).eval()
        # A traced U-Net's graph inputs are (self, X, T[, LABEL]).
        super().__init__(path, device, conditional=len(list(module.graph.inputs())) == 4)
        self.module = module

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # The profiling executor swaps in fused kernels after the first calls of each shape, which
        # changes fp16 results by a rounding step: the same request would not give the same bytes.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            return self.module(*inputs.values())


FP8_MIN_BATCH = 32
"""Below this many images per call an fp8 runner runs the fp16 U-Net instead: its kernels have too
few programs to fill an H100 there. Compiled and CUDA-graphed, fp8 against fp16 per call measured
0.64x at batch 2, 0.81x at 8, 1.13x at 32, 1.24x at 64 and 1.26x at 256; with the TMA convolutions
and the fast layers, 0.92x at 16, 1.13x at 32 and 1.28x at 64 (benchmarks/README.md)."""


class PyTorchRunner(UNetRunner):
    """The model's own weights (.safetensors) run by PyTorch: the GPU fast path.

    With no export in between, the server can use what only live PyTorch offers: channels_last
    convolutions, layers rewritten for that memory (`fastpath`), torch.compile's fused kernels, the
    Triton kernels of `ddpm_triton.kernels`, and CUDA graphs captured around the whole denoising step
    (`stepper.Stepper`).
    """

    def __init__(self, path: Path, device: torch.device, precision: str, compile: bool) -> None:
        model, config = load_model(path, device)
        # Static shapes: one compilation per CUDA-graph bucket (about 25 s each for the CIFAR-10
        # U-Net on an H100). A dynamic-batch compilation takes one pass but its kernels ran 19 ms per
        # step at batch 256 against 12 ms for static ones (benchmarks/README.md).
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

        def prepare(precision: str) -> nn.Module:
            module = PrecisionWrapper(model, precision).to(device)
            gpu = device.type == "cuda"
            use_fast_layers(module.unet, triton_kernels=gpu and module.dtype == torch.float16, pad_channels=gpu)
            if gpu:
                module = module.to(memory_format=torch.channels_last)
            return torch.compile(module, dynamic=False) if compile else module

        self.module = prepare(precision)
        self.small_batch_module = prepare("fp16") if precision == "fp8" else self.module
        super().__init__(path, device, conditional=config.unet.conditional)

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        large = inputs[INPUT_X].shape[0] >= FP8_MIN_BATCH
        if self.device.type == "cuda":
            # The layers run channels_last. Given NCHW images, the compiled U-Net transposes them on
            # its own; transposing first measured 0.09 ms faster per batch-256 call on the H100.
            inputs[INPUT_X] = inputs[INPUT_X].contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return (self.module if large else self.small_batch_module)(*inputs.values())


class OnnxRunner(UNetRunner):
    """onnxruntime, on its CUDA provider when asked for cuda and installed, else on the CPU.

    The output is moved to `device` either way, so a CPU-only onnxruntime on a GPU host still serves
    (slowly); `providers` says which one runs.
    """

    def __init__(self, path: Path, device: torch.device, num_threads: int | None) -> None:
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        names = {i.name for i in self.session.get_inputs()}
        super().__init__(path, device, conditional=INPUT_LABEL in names)

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: tensor.cpu().numpy() for name, tensor in inputs.items()}
        (eps,) = self.session.run([OUTPUT_EPS], feeds)
        return torch.from_numpy(eps).to(self.device)


class TensorRTRunner(UNetRunner):
    """A serialized TensorRT engine run on torch's current CUDA stream, reading and writing torch tensors.

    Written against the TensorRT 10 runtime API and not yet run: no TensorRT installs on these machines.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        trt = import_tensorrt()
        if device.type != "cuda":
            raise ValueError(f"TensorRT engines run on a CUDA device, not {device}")
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"TensorRT could not load {path}: engines only load with the TensorRT version and GPU model "
                "they were built with; rebuild it here"
            )
        self.context = self.engine.create_execution_context()
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        super().__init__(path, device, conditional=INPUT_LABEL in names)

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        eps = torch.empty_like(inputs[INPUT_X])
        for name, tensor in inputs.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(
                    f"{self.path} takes no {name} of shape {tuple(tensor.shape)}: its optimization profile "
                    "bounds the batch size it was built for"
                )
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.context.set_tensor_address(OUTPUT_EPS, eps.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            shapes = {name: tuple(tensor.shape) for name, tensor in inputs.items()}
            raise RuntimeError(f"TensorRT failed to run {self.path} on inputs of shapes {shapes}")
        return eps


def load_runner(
    path: Path, device: str = "cpu", num_threads: int | None = None, precision: str = "fp32", compile: bool = False
) -> UNetRunner:
    """A runner for the artifact at `path`, chosen by its suffix: .safetensors, .pt, .onnx or .plan.

    `num_threads` sizes the CPU thread pool (onnxruntime's per session, torch's per process);
    None keeps the library's default. `precision` and `compile` apply to .safetensors weights,
    which are the only artifact whose precision is chosen at load time.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no U-Net artifact at {path}")
    target = torch.device(device)
    if path.suffix == ".safetensors":
        if num_threads is not None and target.type == "cpu":
            torch.set_num_threads(num_threads)
        return PyTorchRunner(path, target, precision, compile)
    if path.suffix == ".pt":
        return TorchScriptRunner(path, target, num_threads)
    if path.suffix == ".onnx":
        return OnnxRunner(path, target, num_threads)
    if path.suffix == ".plan":
        return TensorRTRunner(path, target)
    raise ValueError(f"{path} is not a U-Net artifact: expected .safetensors weights or a .pt (TorchScript), .onnx or .plan (TensorRT) file")
