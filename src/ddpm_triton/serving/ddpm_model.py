"""The `ddpm` Triton model: runs the denoising loop, asking a U-Net model for every step via BLS.

All images of the requests in one dynamic batch that share a step count run as one loop, and
loops of different step counts run concurrently (each image carries its own timestep, so the
U-Net model's dynamic batcher can merge their calls). `execute` is a coroutine, but Triton 2.51
runs a non-decoupled model's execute to completion before it takes the next batch: requests that
arrive while a batch is mid-loop wait for it (measured in tests/test_reliability.py's notes and
benchmarks/README.md). Step-level batching across such requests is the open part of issue 5.

Loaded by the Python backend through `model_repository/ddpm/1/model.py`; it only runs inside
Triton's Python stub, where `triton_python_backend_utils` exists.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from ddpm_client import contract

from .. import artifacts
from ..config import DiffusionConfig
from ..diffusion import Diffusion
from ..noise import SeededNoise
from ..sampling import Batch, UNetCall, denoise, to_uint8
from .instance import instance_device, parameters
from .requests import Defaults, ImageOptions, InvalidInput, ModelFacts, parse


class UNetFailed(RuntimeError):
    """The U-Net model answered a BLS call with an error."""


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        p = parameters(config)
        self.device = instance_device(args)
        self.unet_model, self.unet_output = p["unet_model"], p["unet_output"]
        self.facts = ModelFacts(int(p["timesteps"]), int(p["num_classes"]), int(config["max_batch_size"]))
        self.defaults = Defaults(
            int(p["default_steps"]), p["default_sampler"], float(p["default_eta"]), float(p["default_guidance_scale"])
        )
        self.diffusion = Diffusion(DiffusionConfig(self.facts.timesteps, p["schedule"]), self.device)
        size, channels = int(p["image_size"]), int(p["channels"])
        self.noise = SeededNoise((channels, size, size), self.device)
        pb_utils.Logger.log_info(f"ddpm: U-Net model {self.unet_model!r} on {self.device}")

    async def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        accepted: list[tuple[int, ImageOptions]] = []
        for i, request in enumerate(requests):
            try:
                accepted.append((i, parse(self._arrays(request), self.facts, self.defaults)))
            except InvalidInput as err:
                responses[i] = _error(str(err), pb_utils.TritonError.INVALID_ARG)
        if accepted:
            try:
                images = await self._generate(_concat([options for _, options in accepted]))
            except UNetFailed as err:
                for i, _ in accepted:
                    responses[i] = _error(str(err), pb_utils.TritonError.UNAVAILABLE)
            else:
                start = 0
                for i, options in accepted:
                    chunk = images[start : start + len(options)]
                    start += len(options)
                    responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(contract.IMAGE.name, chunk)])
        return responses

    def finalize(self) -> None:
        pb_utils.Logger.log_info("ddpm: unloaded")

    # ---- sampling --------------------------------------------------------------------------------

    async def _generate(self, options: ImageOptions) -> np.ndarray:
        """uint8 images [n, H, W, C]; one denoising loop per distinct step count, run concurrently."""
        groups = [np.flatnonzero(options.steps == s) for s in np.unique(options.steps)]
        results = await asyncio.gather(*(self._drive(self._loop(options, index)) for index in groups))
        images = np.empty((len(options), *results[0].shape[1:]), np.uint8)
        for index, result in zip(groups, results):
            images[index] = result
        return images

    def _loop(self, options: ImageOptions, index: np.ndarray) -> Generator[UNetCall, torch.Tensor, torch.Tensor]:
        def tensor(values: np.ndarray | None) -> torch.Tensor | None:
            return None if values is None else torch.from_numpy(values[index]).to(self.device)

        batch = Batch(
            seeds=tensor(options.seeds),
            steps=int(options.steps[index[0]]),
            eta=tensor(options.eta),
            labels=tensor(options.labels),
            guidance=tensor(options.guidance),
        )
        return denoise(batch, self.diffusion, self.noise, null_label=self.facts.num_classes)

    async def _drive(self, loop: Generator[UNetCall, torch.Tensor, torch.Tensor]) -> np.ndarray:
        try:
            call = next(loop)
            while True:
                call = loop.send(await self._unet(call))
        except StopIteration as done:
            return to_uint8(done.value).cpu().numpy()

    async def _unet(self, call: UNetCall) -> torch.Tensor:
        inputs = [
            pb_utils.Tensor.from_dlpack(artifacts.INPUT_X, call.x.contiguous()),
            pb_utils.Tensor.from_dlpack(artifacts.INPUT_T, call.t.reshape(-1, 1).contiguous()),
        ]
        if call.labels is not None:
            labels = call.labels.to(torch.int32).reshape(-1, 1).contiguous()
            inputs.append(pb_utils.Tensor.from_dlpack(artifacts.INPUT_LABEL, labels))
        request = pb_utils.InferenceRequest(
            model_name=self.unet_model, inputs=inputs, requested_output_names=[self.unet_output]
        )
        response = await request.async_exec()
        if response.has_error():
            raise UNetFailed(f"U-Net model {self.unet_model!r} failed: {response.error().message()}")
        eps = pb_utils.get_output_tensor_by_name(response, self.unet_output)
        return torch.from_dlpack(eps.to_dlpack()).to(self.device)

    @staticmethod
    def _arrays(request: Any) -> dict[str, np.ndarray | None]:
        arrays = {}
        for spec in contract.INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            arrays[spec.name] = None if tensor is None else tensor.as_numpy()
        return arrays


def _concat(parts: list[ImageOptions]) -> ImageOptions:
    def join(name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else np.concatenate(values)

    return ImageOptions(*(join(name) for name in ("seeds", "steps", "eta", "labels", "guidance")))


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
