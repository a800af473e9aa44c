"""DDPMClient: images from the server's `ddpm` model, one blocking request per batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .base import ClientBase
from .model_info import ModelInfo
from .requests import Batch, Generation, IntOrInts, Options, Output, decode_images, infer_arguments
from .retry import TRANSPORT_ERRORS

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


class DDPMClient(ClientBase):
    """Generates images with the `ddpm` model of a Triton server, over gRPC or HTTP.

    Use it as a context manager, or call close(), to release the connection. One instance is for
    one thread at a time (as tritonclient's clients are).
    """

    def generate(
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
        """n images: uint8 [n, H, W, C] for output="numpy", a list of PIL images for "pil".

        seed: an int (images get seed, seed+1, ...) or n ints. class_label: an int for all images,
        n ints, or None; NO_LABEL (-1) asks for an unconditional image. An option left None is not
        sent, so the server's configured default applies. The server checks every range and its
        message is raised verbatim as a GenerationError, naming the images of the failed batch.
        """
        call = Generation.of(n, seed, class_label, Options(steps, sampler, eta, guidance_scale), output)
        batches = call.batches(self.model_info().max_batch_size)
        return call.result([self._infer(batch, call.options) for batch in batches])

    def model_info(self) -> ModelInfo:
        """The model's max_batch_size and facts (image_size, num_classes, ...), fetched once."""
        if self._info is None:
            config = self.retry.call(lambda: self._triton.get_model_config(**self.endpoint.config_arguments))
            self._info = self._parse_config(config)
        return self._info

    def server_ready(self) -> bool:
        """Whether the server answers that it is ready; False, not an error, when it cannot be reached."""
        try:
            return bool(self._triton.is_server_ready(**self.endpoint.call_options))
        except TRANSPORT_ERRORS:
            return False

    def close(self) -> None:
        """Release the connection; a later call opens a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self) -> Any:
        return self.endpoint.connect()

    def _infer(self, batch: Batch, options: Options) -> np.ndarray:
        arguments = infer_arguments(self.endpoint, batch, options)
        return decode_images(self.retry.call(lambda: self._triton.infer(**arguments), batch), batch)
