"""The exception of every failed request, whatever the protocol, the client or the cause."""

from __future__ import annotations


class GenerationError(Exception):
    """A request to the server failed, or kept failing after its retries.

    `message` is the server's (or the transport's) message verbatim: the server is the single
    source of the allowed ranges, so the client repeats rather than rephrases it. The other
    fields say where the failure happened, so a caller of a many-batch `generate` can tell
    which images were lost and which input to fix.
    """

    def __init__(
        self,
        message: str,
        *,
        status: str | None = None,
        input_name: str | None = None,
        images: range | None = None,
        seeds: tuple[int, ...] = (),
        attempts: int = 1,
    ) -> None:
        self.message = message
        self.status = status  # "StatusCode.INVALID_ARGUMENT" (gRPC), "400" (HTTP), None (transport)
        self.input_name = input_name  # the contract input the message names, if any
        self.images = images  # indices, within one generate() call, of the failed batch
        self.seeds = seeds  # the seeds of that batch, to ask for exactly those images again
        self.attempts = attempts
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.images is not None:
            where.append(f"images {self.images.start}..{self.images.stop - 1}")
        if self.input_name is not None:
            where.append(f"input {self.input_name}")
        if self.attempts > 1:
            where.append(f"after {self.attempts} attempts")
        status = f"[{self.status}] " if self.status else ""
        return status + self.message + (f" ({', '.join(where)})" if where else "")
