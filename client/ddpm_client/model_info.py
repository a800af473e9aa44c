"""What the server's model config says about `ddpm`: its batch limit and the model's facts.

The facts travel as config `parameters`, which Triton carries as strings; they are typed here
once. Each may be missing (an older server, another model behind the same contract), so each is
optional and a caller decides what it cannot do without.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import GenerationError


@dataclass(frozen=True)
class ModelInfo:
    """The model as its config describes it; a fact the config leaves out is None."""

    name: str
    max_batch_size: int  # images per request; the contract requires > 0
    image_size: int | None = None
    channels: int | None = None
    num_classes: int | None = None  # 0 or None: not class-conditional
    timesteps: int | None = None
    default_steps: int | None = None
    default_sampler: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)  # all of them, as sent

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelInfo:
        """From a model config as JSON (the `ModelConfig` message, either protocol's spelling)."""
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        facts: dict[str, Any] = {key: _typed(key, parameters[key]) for key in _FACTS if key in parameters}
        return cls(
            name=config.get("name", ""),
            max_batch_size=int(config.get("max_batch_size", 0)),
            parameters=parameters,
            **facts,
        )


_FACTS = {
    "image_size": int,
    "channels": int,
    "num_classes": int,
    "timesteps": int,
    "default_steps": int,
    "default_sampler": str,
}
"""The config parameters ModelInfo types, by the names the server's config generator writes."""


def _typed(key: str, text: str) -> int | str:
    try:
        return _FACTS[key](text)
    except ValueError:
        raise GenerationError(f"the model config's parameter {key} should be an integer, got {text!r}") from None
