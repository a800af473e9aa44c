"""AsyncDDPMClient: DDPMClient for asyncio, sending the batches of one call concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from .base import ClientBase
from .model_info import ModelInfo
from .requests import Batch, Generation, IntOrInts, Options, Output, decode_images, infer_arguments
from .retry import TRANSPORT_ERRORS

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

T = TypeVar("T")


class AsyncDDPMClient(ClientBase):
    """DDPMClient's surface with coroutines, on tritonclient.grpc.aio / tritonclient.http.aio.

    Use it as an async context manager, or await close(). It may be built anywhere, but is used
    from one event loop: the tritonclient client behind it is built on first use, in that loop.
    """

    async def generate(
        self,
        n: int,
        seed: IntOrInts = 0,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        class_label: IntOrInts | None = None,
        guidance_scale: float | None = None,
        output: Output = "numpy",
    ) -> np.ndarray | list[Image.Image]:
        """As DDPMClient.generate, with all batches in flight at once; the first failure cancels the rest."""
        call = Generation.of(n, seed, class_label, Options(steps, sampler, eta, guidance_scale), output)
        batches = call.batches((await self.model_info()).max_batch_size)
        return call.result(await _all_or_nothing(self._infer(batch, call.options) for batch in batches))

    async def model_info(self) -> ModelInfo:
        """The model's max_batch_size and facts (image_size, num_classes, ...), fetched once."""
        if self._info is None:
            config = await self.retry.call_async(
                lambda: self._triton.get_model_config(**self.endpoint.config_arguments)
            )
            self._info = self._parse_config(config)
        return self._info

    async def server_ready(self) -> bool:
        """Whether the server answers that it is ready; False, not an error, when it cannot be reached."""
        try:
            return bool(await self._triton.is_server_ready(**self.endpoint.call_options))
        except TRANSPORT_ERRORS:
            return False

    async def close(self) -> None:
        """Release the connection; a later call opens a new one."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connect(self) -> Any:
        return self.endpoint.connect_async()

    async def _infer(self, batch: Batch, options: Options) -> np.ndarray:
        arguments = infer_arguments(self.endpoint, batch, options)
        return decode_images(await self.retry.call_async(lambda: self._triton.infer(**arguments), batch), batch)


async def _all_or_nothing(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Results in order; on the first failure the others are cancelled (not left running) and it is raised."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
