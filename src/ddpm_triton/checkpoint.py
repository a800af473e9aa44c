"""Weights on disk: safetensors files that carry their own `ModelConfig`.

A model file is one `.safetensors` whose metadata holds the config JSON, so "bring your own
checkpoint" means handing over one file, and loading it never unpickles anything. Training state
(optimizer, step) lives beside it in a directory and loads with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .unet import UNet

FORMAT = "ddpm-triton/1"
MODEL_FILE = "ema.safetensors"  # what export and the server read from a training directory
RAW_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"


def save_weights(path: Path, state: dict[str, torch.Tensor], config: ModelConfig, **metadata: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": config.to_json(), **metadata})


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None


def load_weights(path: Path | str) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Tensors and config of a model file, or of the EMA weights of a training directory."""
    path = resolve(path)
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"{path} is not a ddpm-triton model file (its metadata has no {FORMAT} config)")
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is no dict
            state[key] = f.get_tensor(key)
    return state, ModelConfig.from_json(metadata["config"])


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[UNet, ModelConfig]:
    """A U-Net in eval mode with float32 weights from a model file."""
    state, config = load_weights(path)
    model = UNet(config.unet)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval(), config


def resolve(path: Path | str) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path} (expected a .safetensors file or a training directory)")
    return path
