"""What a Python-backend model instance learns from Triton at `initialize`, decoded once."""

from __future__ import annotations

from typing import Any

import torch


def parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """The config's `parameters { key: ... value: { string_value: ... } }` as a plain dict."""
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


def instance_device(args: dict[str, str]) -> torch.device:
    """The device of this instance's instance_group (KIND_GPU -> its CUDA device)."""
    if args["model_instance_kind"] == "GPU":
        return torch.device("cuda", int(args["model_instance_device_id"]))
    return torch.device("cpu")
