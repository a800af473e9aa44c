"""Where the model is served, and the differences between tritonclient's four clients.

tritonclient has a sync and an asyncio client for each protocol, and they disagree on where a
timeout goes (per call for gRPC, per connection for HTTP), on how a model config comes back
(wrapped in `config`, and as JSON only on request, for gRPC) and on when they may be built (the
asyncio ones bind to the event loop running at the time). Keeping those differences in this one
module is what lets the sync and the async client share everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import tritonclient.grpc
import tritonclient.grpc.aio
import tritonclient.http
import tritonclient.http.aio

Protocol = Literal["grpc", "http"]
PROTOCOLS: tuple[Protocol, ...] = ("grpc", "http")


_DEFAULT_PORTS = {"grpc": 8001, "http": 8000}  # tritonserver's


def default_url(protocol: Protocol) -> str:
    """localhost at tritonserver's default port for the protocol, so `protocol="http"` alone works."""
    return f"localhost:{_DEFAULT_PORTS[check_protocol(protocol)]}"


def check_protocol(protocol: str) -> Protocol:
    """The protocol, if it is one; a ValueError listing them otherwise (not a KeyError deep inside)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol


def triton_module(protocol: Protocol) -> ModuleType:
    """tritonclient.grpc or tritonclient.http: both name their tensor classes alike."""
    return {"grpc": tritonclient.grpc, "http": tritonclient.http}[protocol]


@dataclass(frozen=True)
class Endpoint:
    """A model on a server, and how long one call to it may take."""

    url: str  # host:port, no scheme
    protocol: Protocol
    model: str
    timeout_s: float

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        if "://" in self.url:
            raise ValueError(f"url is host:port without a scheme (the protocol argument picks it), got {self.url!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    def connect(self) -> Any:
        """A sync tritonclient client; HTTP's timeouts are set here, gRPC's per call (`call_options`)."""
        if self.protocol == "grpc":
            return tritonclient.grpc.InferenceServerClient(self.url)
        return tritonclient.http.InferenceServerClient(
            self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
        )

    def connect_async(self) -> Any:
        """An asyncio tritonclient client, bound to the running event loop: build it inside that loop."""
        if self.protocol == "grpc":
            return tritonclient.grpc.aio.InferenceServerClient(self.url)
        return tritonclient.http.aio.InferenceServerClient(self.url, conn_timeout=self.timeout_s)

    @property
    def call_options(self) -> dict[str, Any]:
        """Keyword arguments of every call: gRPC's deadline (HTTP's timeouts belong to the connection)."""
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    @property
    def config_arguments(self) -> dict[str, Any]:
        """Keyword arguments of get_model_config: gRPC returns a protobuf unless asked for JSON."""
        as_json = {"as_json": True} if self.protocol == "grpc" else {}
        return {"model_name": self.model, **as_json, **self.call_options}

    def unwrap_config(self, response: Mapping[str, Any]) -> Mapping[str, Any]:
        """The model config as JSON: gRPC wraps it in ModelConfigResponse.config, HTTP does not."""
        return response["config"] if self.protocol == "grpc" else response
