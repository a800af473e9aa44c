"""Client of the `ddpm` model of a ddpm-triton server: images over gRPC or HTTP, sync or asyncio."""

from .aio import AsyncDDPMClient
from .client import DDPMClient
from .contract import MODEL_NAME, NO_LABEL, SAMPLERS
from .errors import GenerationError
from .model_info import ModelInfo

__all__ = ["MODEL_NAME", "NO_LABEL", "SAMPLERS", "AsyncDDPMClient", "DDPMClient", "GenerationError", "ModelInfo"]
