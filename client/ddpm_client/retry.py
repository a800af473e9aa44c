"""Which failures deserve another try, and how every failure reaches the caller.

Only a server that could not be reached (gRPC UNAVAILABLE, HTTP 503, a refused or dropped
connection) may answer differently a moment later. Anything else fails the same way again: an
invalid input, an error of the model, and a timeout too, whose retry would only multiply the
caller's wait. Whatever the outcome, the caller sees one exception type, GenerationError.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp  # tritonclient.http.aio's transport: its connection errors are not OSErrors
from geventhttpclient.response import HTTPConnectionClosed  # tritonclient.http's transport: not an OSError either
from tritonclient.utils import InferenceServerException

from . import contract
from .errors import GenerationError
from .requests import Batch

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({"StatusCode.UNAVAILABLE", "503"})
"""InferenceServerException.status() of a server that is there but not serving (yet, or for now)."""

TRANSPORT_ERRORS = (InferenceServerException, OSError, asyncio.TimeoutError, aiohttp.ClientError, HTTPConnectionClosed)
"""What a tritonclient call raises when the request fails; anything else is a bug and propagates."""

_INPUT_NAME = re.compile(r"\b(" + "|".join(spec.name for spec in contract.INPUTS) + r")\b")


def is_retryable(error: BaseException) -> bool:
    """True for errors of reaching the server, false for errors of the request and for timeouts."""
    if isinstance(error, InferenceServerException):
        return error.status() in RETRYABLE_STATUSES
    if isinstance(error, asyncio.TimeoutError):  # before the next test: aiohttp's timeouts are connection errors too
        return False
    # HTTPConnectionClosed: the server dropped the connection before its answer (e.g. it was restarted)
    return isinstance(error, (ConnectionError, aiohttp.ClientConnectionError, HTTPConnectionClosed))


def as_generation_error(error: BaseException, batch: Batch | None = None, attempts: int = 1) -> GenerationError:
    """The server's message verbatim, its status, the contract input it names and the batch it failed."""
    if isinstance(error, InferenceServerException):
        message, status = error.message() or "", error.status()
    else:
        message, status = _describe(error), None
    named = _INPUT_NAME.search(message)
    details = {"status": status, "input_name": named and named.group(1), "attempts": attempts}
    return batch.failure(message, **details) if batch is not None else GenerationError(message, **details)


def _describe(error: BaseException) -> str:
    """A transport error as text; aiohttp's timeouts carry no message of their own."""
    text = str(error) or ("timed out" if isinstance(error, asyncio.TimeoutError) else "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `retries` more attempts after the first, waiting backoff_s, 2 backoff_s, 4 backoff_s, ..."""

    retries: int = 3
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError(f"retries and backoff_s must be >= 0, got {self.retries} and {self.backoff_s}")

    def delay_s(self, attempt: int) -> float:
        """Wait after failed attempt number `attempt` (1-based)."""
        return self.backoff_s * 2 ** (attempt - 1)

    def call(self, request: Callable[[], T], batch: Batch | None = None) -> T:
        """request(), retried per the policy; any failure raised as GenerationError."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return request()
            except TRANSPORT_ERRORS as error:
                wait_s = self._wait_or_raise(error, attempt, batch)
            time.sleep(wait_s)

    async def call_async(self, request: Callable[[], Awaitable[T]], batch: Batch | None = None) -> T:
        """`call` for coroutines: the same policy, waiting without blocking the event loop."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await request()
            except TRANSPORT_ERRORS as error:
                wait_s = self._wait_or_raise(error, attempt, batch)
            await asyncio.sleep(wait_s)

    def _wait_or_raise(self, error: BaseException, attempt: int, batch: Batch | None) -> float:
        """The wait before the next attempt, or the GenerationError that ends the call."""
        if attempt > self.retries or not is_retryable(error):
            raise as_generation_error(error, batch, attempt) from error
        return self.delay_s(attempt)
