"""The `ddpm` Triton model: validates requests and hands their images to the step scheduler.

`execute` never waits for sampling. Each request gets its response sender; valid requests are
submitted to a `StepScheduler` whose worker thread batches the denoising steps of every request in
flight; when a request's last image is done its response is sent through its sender from the
outbox thread (`outbox.Outbox`: sending waits for the server process, the stepping thread must
not). A non-decoupled model may answer this way: one response per request, flagged final, and
`execute` returns None. Triton can therefore hand `execute` the next requests while earlier ones
are mid-loop, and they join the very next U-Net call.

Where the U-Net runs (model config parameters):
- `unet_execution: in_process` loads `unet_artifact` (a path in the repository) into this process:
  .safetensors weights through PyTorch (with `precision`, `compile`, `cuda_graphs`: the GPU fast
  path), or an exported .onnx / .pt / .plan through its runtime;
- `unet_execution: bls` calls the Triton model `unet_model` once per step (one BLS request per
  U-Net batch, not per image): the way to reach the native TensorRT and ONNX Runtime backends of
  NVIDIA's container.

Loaded by the Python backend through `model_repository/ddpm/1/model.py`; it only runs inside
Triton's Python stub, where `triton_python_backend_utils` exists.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from ddpm_client import contract

from .. import artifacts
from ..config import DiffusionConfig
from ..diffusion import Diffusion
from ..runners import load_runner
from ..scheduler import Busy, Job, StepScheduler
from ..stepper import Stepper, UNetFn
from .instance import instance_device, parameters
from .outbox import Outbox
from .requests import Defaults, InvalidInput, ModelFacts, parse

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
T = TypeVar("T")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        p = parameters(config)
        self.device = instance_device(args)
        if self.device.type == "cuda":
            # The stub's host-side torch work is per request and tiny (x_T of a few images). With
            # intra-op threads, each transcendental op on more than 2048 elements forks an OpenMP
            # team; on a host busy with Triton's and the clients' threads a late team member holds
            # up the join, and `execute` spent two thirds of its time on one Box-Muller line at 64
            # clients while requests waited in Triton's queue (benchmarks/README.md).
            torch.set_num_threads(1)
        self.facts = ModelFacts(int(p["timesteps"]), int(p["num_classes"]), int(config["max_batch_size"]))
        self.defaults = Defaults(
            int(p["default_steps"]), p["default_sampler"], float(p["default_eta"]), float(p["default_guidance_scale"])
        )
        size, channels = int(p["image_size"]), int(p["channels"])
        max_step_batch, capacity = int(p["max_step_batch"]), int(p["max_queued_images"])
        unet, where = self._unet(p, Path(args["model_repository"]).parent)
        stepper = Stepper(
            unet,
            Diffusion(DiffusionConfig(self.facts.timesteps, p["schedule"]), self.device),
            (channels, size, size),
            capacity=capacity,
            max_steps=self.facts.timesteps,
            null_label=self.facts.num_classes if self.facts.num_classes else None,
            device=self.device,
            cuda_graphs=p["cuda_graphs"] == "true",
            max_batch=max_step_batch,
        )
        stepper.warm_up(guided=bool(self.facts.num_classes) and self.defaults.guidance_scale != 1)
        if p["compile"] == "true":
            # Every graph is captured: nothing compiles from here on, so Inductor's compile workers
            # (child processes holding about 7 GB of host memory on the H100 bench) can go now
            # rather than when their idle timer quiesces them in the middle of serving.
            from torch._inductor.async_compile import shutdown_compile_workers

            shutdown_compile_workers()
        self.scheduler = StepScheduler(stepper)
        self.outbox = Outbox("ddpm-responses")
        self.metrics = _Metrics(self.scheduler, {"model": args["model_name"], "version": args["model_version"]})
        self.scheduler.start()
        pb_utils.Logger.log_info(
            f"ddpm: U-Net {where} on {self.device}; up to {max_step_batch} images per step, {capacity} in progress"
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                options = parse(self._arrays(request), self.facts, self.defaults)
                self.scheduler.submit(Job(options, done=self._posted(self._reply, sender), failed=self._posted(self._fail, sender)))
            except InvalidInput as err:
                _send_error(sender, str(err), pb_utils.TritonError.INVALID_ARG)
            except Busy as err:
                _send_error(sender, str(err), pb_utils.TritonError.UNAVAILABLE)
        return None

    def finalize(self) -> None:
        self.scheduler.stop("the ddpm model is being unloaded")
        self.outbox.close()
        pb_utils.Logger.log_info("ddpm: unloaded")

    def _posted(self, answer: Callable[[Any, T], None], sender: Any) -> Callable[[T], None]:
        """A job callback that only posts `answer(sender, value)` to the outbox: the scheduler calls it
        on its stepping thread, which must not wait for the server to take the response."""
        return lambda value: self.outbox.post(functools.partial(answer, sender, value))

    def _reply(self, sender: Any, images: np.ndarray) -> None:
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor(contract.IMAGE.name, images)]), flags=FINAL)
        self.metrics.update()

    def _fail(self, sender: Any, message: str) -> None:
        _send_error(sender, message, pb_utils.TritonError.UNAVAILABLE)
        self.metrics.update()

    def _unet(self, p: dict[str, str], repository: Path) -> tuple[UNetFn, str]:
        """The U-Net callable and a description of where it runs."""
        if p["unet_execution"] == "bls":
            return functools.partial(_bls_unet, p["unet_model"], p["unet_output"], self.device), f"model {p['unet_model']!r} (BLS)"
        path = repository / p["unet_artifact"]
        runner = load_runner(path, str(self.device), precision=p["precision"], compile=p["compile"] == "true")
        return runner, f"{p['unet_artifact']} in process ({p['precision']}, compile={p['compile']}, cuda_graphs={p['cuda_graphs']})"

    @staticmethod
    def _arrays(request: Any) -> dict[str, np.ndarray | None]:
        arrays = {}
        for spec in contract.INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            arrays[spec.name] = None if tensor is None else tensor.as_numpy()
        return arrays


class UNetFailed(RuntimeError):
    """The U-Net model answered a BLS call with an error."""


def _bls_unet(model: str, output: str, device: torch.device, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    inputs = [
        pb_utils.Tensor.from_dlpack(artifacts.INPUT_X, x.contiguous()),
        pb_utils.Tensor.from_dlpack(artifacts.INPUT_T, t.reshape(-1, 1).contiguous()),
    ]
    if labels is not None:
        inputs.append(pb_utils.Tensor.from_dlpack(artifacts.INPUT_LABEL, labels.to(torch.int32).reshape(-1, 1).contiguous()))
    response = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=[output]).exec()
    if response.has_error():
        raise UNetFailed(f"U-Net model {model!r} failed: {response.error().message()}")
    eps = pb_utils.get_output_tensor_by_name(response, output)
    return torch.from_dlpack(eps.to_dlpack()).to(device)


def _send_error(sender: Any, message: str, code: Any) -> None:
    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), flags=FINAL)


class _Metrics:
    """Custom Prometheus metrics on Triton's metrics port: how well steps are being batched."""

    def __init__(self, scheduler: StepScheduler, labels: dict[str, str]) -> None:
        self.scheduler = scheduler
        calls = pb_utils.MetricFamily("ddpm_unet_calls", "U-Net calls (denoising steps) run", pb_utils.MetricFamily.COUNTER)
        images = pb_utils.MetricFamily(
            "ddpm_images_stepped", "image-steps run; divided by ddpm_unet_calls: the mean step batch", pb_utils.MetricFamily.COUNTER
        )
        progress = pb_utils.MetricFamily("ddpm_images_in_progress", "images admitted and not yet finished", pb_utils.MetricFamily.GAUGE)
        self._families = (calls, images, progress)  # a Metric lives only as long as its family
        self.calls, self.images, self.progress = (f.Metric(labels=labels) for f in self._families)
        self._reported = (0, 0)

    def update(self) -> None:
        counters = self.scheduler.counters
        calls, images = counters.unet_calls, counters.images_stepped
        self.calls.increment(calls - self._reported[0])
        self.images.increment(images - self._reported[1])
        self._reported = (calls, images)
        self.progress.set(self.scheduler.in_progress)
