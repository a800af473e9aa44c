"""Client of the `ddpm` model of a ddpm-triton server: images over gRPC or HTTP, sync or asyncio.

The clients load lazily: the server imports `ddpm_client.contract` inside Triton's Python stub,
where tritonclient need not be installed, and importing this package must not require it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .contract import MODEL_NAME, NO_LABEL, SAMPLERS
from .errors import GenerationError
from .model_info import ModelInfo

if TYPE_CHECKING:
    from .aio import AsyncDDPMClient
    from .client import DDPMClient

_CLIENTS = {"DDPMClient": ".client", "AsyncDDPMClient": ".aio"}


def __getattr__(name: str) -> Any:
    if name in _CLIENTS:
        from importlib import import_module

        return getattr(import_module(_CLIENTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODEL_NAME", "NO_LABEL", "SAMPLERS", "AsyncDDPMClient", "DDPMClient", "GenerationError", "ModelInfo"]
