"""The HTTP front of a local Triton 2.51 server: it refuses the two kinds of request that Triton 2.51
cannot survive or bound, and passes every other request and response through unchanged.

- **A JSON input whose declared shape is far larger than its data.** Triton 2.51 reserves memory for
  the declared shape before it compares the two: `"shape": [1099511627776, 1]` with one value throws
  std::bad_alloc and aborts the whole process, every model with it. One unauthenticated request is
  enough (tests/test_security.py keeps that as a strict expected failure against Triton's own port).
- **JSON nested tens of thousands of levels deep.** Triton 2.51's parser recurses per level and
  overflows its stack (50,000 levels of `[` in a `data` field abort it; 20,000 do not).
- **A body of any size.** Triton 2.51 reads it all into memory; it has no --http-max-input-size yet.

Both are fixed in later releases, but 2.51 is the newest server that installs without Docker
(nvidia-pytriton 0.7.0), so `TritonServer` moves Triton's HTTP endpoint to a private loopback port and
puts this front on the public one. docker-compose.yml serves NGC 25.10 (Triton 2.62) and has no front.
gRPC needs none for these: its batch dimension is 32-bit in 2.51 (a declared batch of 2**40 arrives
as shape [1], which `ddpm`'s own shape check refuses), and its tensors are bytes, not nested JSON.

Refusals look like Triton's own errors (`{"error": "..."}`, 400 or 413), so tritonclient raises them as
InferenceServerException with the message. When Triton drops a connection without an answer (killed
mid-request), the front drops the client's connection too rather than invent a status for it; when
Triton is not listening at all (starting, or restarting after its watchdog ended it), it answers 503,
which clients retry.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

MAX_BODY_BYTES = 64 * 2**20
"""Triton's own --http-max-input-size default in the releases that have one; a `ddpm` request is a few
hundred bytes, and its largest legitimate input (SAMPLER text, one per image) is far below it."""

INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
HEADER_LENGTH = "Inference-Header-Content-Length"  # set when binary tensors follow the JSON header
HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
              "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Expect")  # fmt: skip
)
"""Headers that describe one connection, not the message: each side of the front sets its own (and
the front has read the whole body before it connects, so a client's `Expect: 100-continue` ends there)."""


class Refusal(Exception):
    """A request the front answers itself: its HTTP status and the message for `{"error": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _count_values(data: Any) -> int:
    """Scalars in a JSON `data` field, flat or nested (Triton takes both), without recursion."""
    count, pending = 0, [data]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        else:
            count += 1
    return count


def check_inference_header(header: Any) -> None:
    """Raise Refusal for a JSON input whose declared shape does not hold exactly its `data`.

    Everything else (a malformed header, negative or fractional dimensions, binary or shared-memory
    inputs) Triton 2.51 refuses safely itself, with its own messages, so it goes through unchanged.
    """
    inputs = header.get("inputs") if isinstance(header, dict) else None
    for tensor in inputs if isinstance(inputs, list) else ():
        if not isinstance(tensor, dict) or "data" not in tensor:
            continue
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            continue
        declared, held = math.prod(shape), _count_values(tensor["data"])
        if declared != held:
            raise Refusal(
                400,
                f"input '{tensor.get('name')}' declares shape {shape}, {declared:,} values, but its 'data' "
                f"holds {held:,}",
            )


def _decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """The body as Triton will read it: gzip and deflate bodies inflated, to at most `limit` bytes."""
    if encoding not in ("gzip", "deflate"):
        return body
    inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)  # either wrapper
    try:
        plain = inflate.decompress(body, limit + 1)
    except zlib.error as err:
        raise Refusal(400, f"the {encoding} request body does not inflate: {err}") from err
    if len(plain) > limit:
        raise Refusal(413, f"the request body inflates to over {limit:,} bytes, the limit of this server")
    return plain


def check_inference_request(body: bytes, headers: Mapping[str, str], limit: int = MAX_BODY_BYTES) -> None:
    """Raise Refusal for an inference request (its raw body) that must not reach Triton 2.51."""
    plain = _decoded(body, headers.get("Content-Encoding", "").strip().lower(), limit)
    length = headers.get(HEADER_LENGTH)
    json_part = plain[: int(length)] if length and length.isdigit() else plain
    try:
        header = json.loads(json_part)
    except RecursionError:  # Python's parser gives up at about a thousand levels, far below Triton's crash
        raise Refusal(400, "the request's JSON is nested too deeply to parse") from None
    except ValueError:
        return  # Triton answers JSON it cannot parse with its own error
    check_inference_header(header)


@dataclass
class HttpFront:
    """Listens on host:port and forwards to Triton's HTTP endpoint on 127.0.0.1:upstream_port.

    It runs an asyncio loop (aiohttp) on a thread of its own, from start() until stop().
    """

    host: str
    port: int
    upstream_port: int
    max_body_bytes: int = MAX_BODY_BYTES
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stopped: asyncio.Event | None = field(default=None, init=False, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)  # to Triton

    def start(self) -> HttpFront:
        """Return once the front listens; raise OSError if it cannot (the port is taken)."""
        listening = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(listening))
            except BaseException as err:  # noqa: BLE001 - reported to start()'s caller
                failure.append(err)
                listening.set()

        self._thread = threading.Thread(target=run, name=f"http-front-{self.port}", daemon=True)
        self._thread.start()
        listening.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _serve(self, listening: threading.Event) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        self._session = aiohttp.ClientSession(
            f"http://127.0.0.1:{self.upstream_port}",
            # One connection to Triton per request, closed after it, as many at once as clients send:
            # Triton's graceful shutdown waits for every open HTTP connection, idle ones included.
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None),  # a 1000-step request takes what it takes: clients time out
            auto_decompress=False,  # responses go through as Triton encoded them
            skip_auto_headers=("Accept-Encoding", "Content-Type", "User-Agent"),  # only the client's own
        )
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{path:.*}", self._forward)
        # auto_decompress=False: bodies reach _forward (and Triton) as the client encoded them.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
            listening.set()
            await self._stopped.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            if request.method == "POST" and INFER_PATH.match(request.path):
                check_inference_request(body, request.headers, self.max_body_bytes)
        except Refusal as refusal:
            return web.json_response({"error": str(refusal)}, status=refusal.status)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            assert self._session is not None
            async with self._session.request(
                request.method, request.raw_path, data=body, headers=headers, allow_redirects=False
            ) as upstream:
                response = web.StreamResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
                )
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectorError:
            down = f"Triton is not accepting connections on port {self.upstream_port} (starting or restarting)"
            return web.json_response({"error": down}, status=503)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError):
            # Triton closed the connection without (all of) its answer: so does the front.
            request.transport.abort()
            raise asyncio.CancelledError from None

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, refused with 413 over the limit (announced or streamed)."""
        try:
            if request.content_length is not None and request.content_length > self.max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(self.max_body_bytes, request.content_length)
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = f"the request body is over {self.max_body_bytes:,} bytes, the limit of this server"
            raise Refusal(413, limit) from None
