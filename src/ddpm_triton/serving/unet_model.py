"""A U-Net Triton model on the Python backend: runs an exported artifact with its own runtime.

The pip-installed Triton server has only the Python backend, so ONNX, TorchScript and TensorRT
artifacts run here through onnxruntime, torch.jit and the TensorRT runtime. The dynamic batcher
hands `execute` several requests at once (steps of different `ddpm` loops); they are concatenated
into one U-Net call, which is the point of batching them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import triton_python_backend_utils as pb_utils

from .. import artifacts
from ..runners import load_runner
from .instance import instance_device, parameters


def _tensor(request: Any, name: str) -> torch.Tensor | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else torch.from_dlpack(tensor.to_dlpack())


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / parameters(config)["artifact"]
        self.device = instance_device(args)
        self.runner = load_runner(path, str(self.device))
        pb_utils.Logger.log_info(f"{args['model_name']}: {path.name} on {self.device}")

    def execute(self, requests: list[Any]) -> list[Any]:
        xs, ts, labels = [], [], []
        for request in requests:
            xs.append(_tensor(request, artifacts.INPUT_X).to(self.device))
            ts.append(_tensor(request, artifacts.INPUT_T).to(self.device).reshape(-1))
            label = _tensor(request, artifacts.INPUT_LABEL)
            if label is not None:
                labels.append(label.to(self.device).reshape(-1))
        eps = self.runner(torch.cat(xs), torch.cat(ts), torch.cat(labels) if labels else None)
        responses, start = [], 0
        for x in xs:
            out = eps[start : start + len(x)].contiguous()
            start += len(x)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(artifacts.OUTPUT_EPS, out)])
            )
        return responses
