"""Triton model configs for the three places a repository is served from, built from one description.

- `config.pbtxt`: the pip-installed server (only the Python backend), instances on the CPU;
- `configs/gpu.pbtxt`: the same server with instances on a GPU (`--model-config-name gpu`);
- `configs/container.pbtxt`: NVIDIA's tritonserver image, U-Nets on the native backends
  (`--model-config-name container`).

Every target serves the same `ddpm` contract and the same U-Net artifacts; only the backend and
the device differ, so one export serves all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ddpm_client import contract

from ddpm_triton import artifacts
from ddpm_triton.artifacts import Variant
from ddpm_triton.config import ModelConfig
from ddpm_triton.watchdog import POLICY, RESTART_SERVER

from .pbtxt import Enum, parameters

TARGETS = {"cpu": "config.pbtxt", "gpu": "configs/gpu.pbtxt", "container": "configs/container.pbtxt"}

# The U-Net `ddpm` calls on each target unless told otherwise: the fastest that was exported.
UNET_PREFERENCE = {
    "cpu": ("unet_onnx_fp32", "unet_torchscript_fp32", "unet_onnx_int8"),
    "gpu": ("unet_torchscript_fp16", "unet_torchscript_fp32", "unet_tensorrt_fp16", "unet_onnx_fp32"),
    "container": (
        "unet_tensorrt_fp16",
        "unet_tensorrt_int8",
        "unet_tensorrt_fp32",
        "unet_onnx_fp16",
        "unet_onnx_fp32",
        "unet_torchscript_fp32",
    ),
}


# Where `ddpm` runs the U-Net on each target (see serving/ddpm_model.py): in its own process where
# PyTorch or the artifact's runtime is at hand, through BLS where only a native backend runs it.
EXECUTION = {"cpu": "in_process", "gpu": "in_process", "container": "bls"}

# What the stub watchdog (src/ddpm_triton/watchdog.py) does when `ddpm`'s stub process dies, on
# every target: restart tritonserver, not reload the model. `ddpm` answers its requests through
# response senders from its scheduler's thread (execute returns None), and Triton 2.51 never
# answers a request that was in flight on a stub that died: a reload serves new requests but leaves
# those hanging until their clients' deadlines. Ending the server closes their connections, so their
# clients get an error at once (ddpm-client retries it). The U-Nets answer inside execute, where
# Triton fails their requests itself, so they keep the watchdog's default: a reload.
DDPM_ON_STUB_DEATH = RESTART_SERVER

WEIGHTS = "model.safetensors"
"""The checkpoint's weights, copied into `ddpm/1/`: what the GPU fast path loads."""


@dataclass(frozen=True)
class ServingOptions:
    max_batch_size: int = 16
    """Images per request (Triton rejects larger requests before they reach the model)."""
    max_step_batch: int = 64
    """Images per U-Net call, across requests; U-Net models take twice as many (guidance doubles it)."""
    max_queued_images: int = 256
    """Images admitted at once (stepping or waiting for a place in a step); beyond it requests are refused."""
    default_steps: int = 50
    default_sampler: str = "ddim"
    default_eta: float = 0.0
    default_guidance_scale: float = 2.0
    unet: str | None = None
    """The U-Net `ddpm` runs on every target; None picks by UNET_PREFERENCE (on a GPU: the weights)."""
    execution: str | None = None
    """in_process or bls on every target; None picks by EXECUTION."""
    gpu_precision: str = "fp16"
    """Compute precision of the weights on the GPU fast path."""
    compile: bool = True
    """torch.compile the U-Net on the GPU fast path (a minute at load; fused GroupNorm+SiLU)."""
    ddpm_queue_delay_us: int = 0
    unet_queue_delay_us: int = 500


def _kind(target: str) -> Enum:
    return Enum("KIND_CPU" if target == "cpu" else "KIND_GPU")


def choose_unet(target: str, variants: list[Variant], options: ServingOptions) -> str:
    names = [v.model_name for v in variants]
    if options.unet is not None:
        if options.unet not in names:
            raise ValueError(f"--unet {options.unet} is not among the exported U-Nets: {', '.join(names)}")
        return options.unet
    for name in UNET_PREFERENCE[target]:
        if name in names:
            return name
    return names[0]


def unet_output_name(variant: Variant, target: str) -> str:
    """LibTorch names outputs by position (<name>__<index>); every other backend keeps EPS."""
    return artifacts.OUTPUT_EPS + ("__0" if target == "container" and variant.format == "torchscript" else "")


def _in_process(unet: str, options: ServingOptions, target: str) -> dict[str, str]:
    """Parameters of the in-process U-Net: the weights on a GPU unless a U-Net was named, else `unet`'s artifact."""
    if target == "gpu" and options.unet is None:
        artifact, precision, fast = f"{contract.MODEL_NAME}/1/{WEIGHTS}", options.gpu_precision, True
    else:
        artifact, precision, fast = f"{unet}/1/{Variant.from_model_name(unet).filename}", "fp32", False
    return {
        "unet_artifact": artifact,
        "precision": precision,
        "compile": str(fast and options.compile).lower(),
        "cuda_graphs": str(fast).lower(),
    }


def ddpm_config(model: ModelConfig, unet: str, options: ServingOptions, target: str) -> dict[str, Any]:
    u = model.unet
    image = contract.IMAGE
    inputs = [
        {"name": s.name, "data_type": Enum(s.config_type), "dims": list(s.dims), **({"optional": True} if s.optional else {})}
        for s in contract.INPUTS
    ]
    return {
        "name": contract.MODEL_NAME,
        "backend": "python",
        "max_batch_size": options.max_batch_size,
        "input": inputs,
        "output": [{"name": image.name, "data_type": Enum(image.config_type), "dims": [u.image_size, u.image_size, u.in_channels]}],
        "dynamic_batching": {"max_queue_delay_microseconds": options.ddpm_queue_delay_us},
        "instance_group": [{"count": 1, "kind": _kind(target)}],
        "parameters": parameters(
            {
                "unet_execution": options.execution or EXECUTION[target],
                **_in_process(unet, options, target),
                "unet_model": unet,
                "unet_output": unet_output_name(Variant.from_model_name(unet), target),
                "max_step_batch": str(options.max_step_batch),
                "max_queued_images": str(options.max_queued_images),
                "timesteps": str(model.diffusion.timesteps),
                "schedule": model.diffusion.schedule,
                "image_size": str(u.image_size),
                "channels": str(u.in_channels),
                "num_classes": str(u.num_classes),
                "default_steps": str(options.default_steps),
                "default_sampler": options.default_sampler,
                "default_eta": str(options.default_eta),
                "default_guidance_scale": str(options.default_guidance_scale if u.conditional else 1.0),
                POLICY: DDPM_ON_STUB_DEATH,
            }
        ),
    }


def unet_config(model: ModelConfig, variant: Variant, options: ServingOptions, target: str) -> dict[str, Any]:
    u = model.unet
    image_dims = [u.in_channels, u.image_size, u.image_size]
    per_sample = {"dims": [1], "reshape": {"shape": []}}
    inputs = [
        {"name": artifacts.INPUT_X, "data_type": Enum("TYPE_FP32"), "dims": image_dims},
        {"name": artifacts.INPUT_T, "data_type": Enum("TYPE_FP32"), **per_sample},
    ]
    if u.conditional:
        inputs.append({"name": artifacts.INPUT_LABEL, "data_type": Enum("TYPE_INT32"), **per_sample})
    config: dict[str, Any] = {"name": variant.model_name}
    if target == "container":
        config.update(platform=artifacts.NATIVE_PLATFORMS[variant.format], default_model_filename=variant.filename)
    else:
        # The Python backend takes default_model_filename as its .py file; the artifact goes in a parameter.
        config["backend"] = "python"
    config.update(
        {
            "max_batch_size": 2 * options.max_step_batch,
            "input": inputs,
            "output": [{"name": unet_output_name(variant, target), "data_type": Enum("TYPE_FP32"), "dims": image_dims}],
            "dynamic_batching": {"max_queue_delay_microseconds": options.unet_queue_delay_us},
            "instance_group": [{"count": 1, "kind": _kind(target)}],
        }
    )
    if target != "container":
        python_parameters = {"artifact": variant.filename}
        if target == "gpu":
            # Keep BLS tensors from `ddpm` on the GPU instead of staging them through host memory.
            python_parameters["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
        config["parameters"] = parameters(python_parameters)
    return config
