"""Responses sent from a thread of their own, so that the stepping thread never waits for the server.

In the Python backend, `ResponseSender.send` and every update of a custom metric hand a message
to the Triton server process and wait until it has been taken (an IPC round trip, with the GIL
released). Made on the step scheduler's worker, those waits came between U-Net calls: with 64
single-image clients on an H100 the worker was idle in them for most of its time and the step
took the host's time plus the GPU's instead of the larger of the two
(benchmarks/results/profile-*.md). Posted here, they overlap the next steps instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class OutboxClosed(RuntimeError):
    """Work was posted after `close`: it would never run."""


class Outbox:
    """Runs posted callables one at a time, in the order posted, on a daemon thread."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def post(self, work: Callable[[], None]) -> None:
        if self._closed.is_set():
            raise OutboxClosed("the outbox is closed: nothing posted now would be sent")
        self._queue.put(work)

    def close(self) -> None:
        """Run everything posted so far, then end the thread."""
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                work()
            except Exception:  # noqa: BLE001 - one failed send (a client gone, say) must not stop the rest
                log.exception("sending a response failed")
