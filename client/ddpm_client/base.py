"""What the sync and the async client hold alike: where the model is, the retry policy, its config."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from .contract import MODEL_NAME
from .model_info import ModelInfo
from .retry import RetryPolicy
from .transport import Endpoint, Protocol, default_url


class ClientBase(ABC):
    """The constructor and state of DDPMClient and AsyncDDPMClient, which differ only in how they wait."""

    def __init__(
        self,
        url: str | None = None,
        protocol: Protocol = "grpc",
        model: str = MODEL_NAME,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        """Nothing is sent until the first call.

        url: host:port, by default localhost at the protocol's standard port (8001 gRPC, 8000 HTTP).
        timeout_s bounds each attempt of each request. retries and backoff_s apply only to a server
        that cannot be reached (retry.py says why).
        """
        self.endpoint = Endpoint(default_url(protocol) if url is None else url, protocol, model, timeout_s)
        self.retry = RetryPolicy(retries, backoff_s)
        self._info: ModelInfo | None = None  # fetched once: max_batch_size is fixed while the model is loaded
        self._connection: Any = None

    @property
    def _triton(self) -> Any:
        """The tritonclient client, built on first use: an asyncio one binds to the loop it is built in."""
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    @abstractmethod
    def _connect(self) -> Any:
        """A new tritonclient client of the subclass's kind, sync or asyncio."""

    def __repr__(self) -> str:
        e = self.endpoint
        return f"{type(self).__name__}(url={e.url!r}, protocol={e.protocol!r}, model={e.model!r})"

    def _parse_config(self, config_response: Mapping[str, Any]) -> ModelInfo:
        return ModelInfo.from_config(self.endpoint.unwrap_config(config_response))
