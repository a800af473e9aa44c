"""Step-level batching across requests: one worker that keeps every in-flight image moving.

A request's images join the running set as soon as they arrive and each U-Net call takes the
next step of up to `max_batch` of them, whatever their request, step count or sampler; a request
is answered the moment its last image finishes. Compared with running each request's loop to the
end, a newcomer waits for at most one step instead of a whole loop, and a GPU busy with one
long request still serves short ones.

Fairness and bounds: images are stepped oldest request first, so a request only ever waits behind
requests that arrived before it and each of those finishes in a bounded number of steps: nothing
starves. At most `capacity` images are admitted (running or waiting for a place in a step); a
request that would exceed it is refused at once with `Busy` rather than queued without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from .stepper import Admission, Readback, Stepper

log = logging.getLogger(__name__)
T = TypeVar("T")


class Busy(RuntimeError):
    """Admitting the request would exceed the bound on admitted images; try again later."""


@dataclass(frozen=True)
class ImageOptions:
    """Per-image options of one request, arrays of length n."""

    seeds: np.ndarray  # int64
    steps: np.ndarray  # int64
    eta: np.ndarray  # float32: 1 = DDPM ancestral, 0 = deterministic DDIM
    labels: np.ndarray | None = None  # int64 in [0, num_classes], num_classes = unconditional
    guidance: np.ndarray | None = None  # float32

    def __len__(self) -> int:
        return len(self.seeds)


@dataclass(eq=False)
class Job:
    images: ImageOptions
    done: Callable[[np.ndarray], None]
    """Called from the worker thread with uint8 images [n, H, W, C], in request order. It must return
    quickly (hand slow work, such as sending the response, to another thread): the next step waits."""
    failed: Callable[[str], None]
    """Called with a message when the request cannot finish: from the worker thread, or from `submit`
    when its images could not even be prepared."""
    admission: Admission | None = None  # prepared by `submit`, consumed by the worker's admission
    slots: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    unfinished: int = 0  # images still being denoised


@dataclass
class Counters:
    """Totals since start, for metrics: images / unet_calls is the mean U-Net batch."""

    unet_calls: int = 0
    images_stepped: int = 0
    requests_done: int = 0
    requests_failed: int = 0


class StepScheduler:
    """Schedules `stepper`'s slots: its capacity bounds the images admitted, its max_batch a step."""

    def __init__(self, stepper: Stepper) -> None:
        self.stepper = stepper
        capacity = self.capacity = stepper.capacity
        self.max_batch = stepper.max_batch
        self.counters = Counters()
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0  # images submitted and not yet finished (guarded by _lock)
        self._free = list(range(capacity - 1, -1, -1))
        self._running: set[Job] = set()
        # Unfinished slots, oldest request first: a step takes the head of this array, so per-step
        # bookkeeping is a few numpy operations whatever the number of requests in flight.
        self._order = np.empty(0, np.int64)
        self._owner: list[Job | None] = [None] * capacity
        self._deliveries: list[tuple[Job, Readback]] = []  # finished, images on their way to the host
        # Host mirrors of the per-slot progress: the worker never reads the device to schedule.
        self._position = np.zeros(capacity, np.int64)
        self._length = np.zeros(capacity, np.int64)
        self._stochastic = np.zeros(capacity, bool)
        self._guided = np.zeros(capacity, bool)
        self._thread: threading.Thread | None = None

    # ---- producer side (any thread) --------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a request; raise Busy if it would take admitted images past `capacity`.

        Its images are prepared here, on the caller's thread (x_T, schedule rows), not the worker's.
        """
        images = job.images
        n = len(images)
        with self._lock:
            if self._admitted + n > self.capacity:
                raise Busy(
                    f"the server is at capacity: {self._admitted} images in progress and this request asks for {n} "
                    f"(limit {self.capacity}); retry later"
                )
            self._admitted += n
        try:
            job.admission = self.stepper.prepare(images.seeds, images.steps, images.eta, images.labels, images.guidance)
        except Exception as err:  # noqa: BLE001 - a request that cannot start fails alone
            log.exception("preparing a request failed")
            with self._lock:
                self._admitted -= n
            self.counters.requests_failed += 1
            _notify(job.failed, f"could not start sampling: {err}")
            return
        self._inbox.put(job)

    @property
    def in_progress(self) -> int:
        with self._lock:
            return self._admitted

    # ---- worker ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="ddpm-step-scheduler", daemon=True)
        self._thread.start()

    def stop(self, reason: str) -> None:
        """End the worker; requests still in progress fail with `reason`."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join()
            self._thread = None
        self._deliver(block=True)
        for job in self._running:
            self._fail(job, reason)
        self._running.clear()
        self._order = self._order[:0]
        while not self._inbox.empty():
            job = self._inbox.get_nowait()
            if job is not None:
                self._fail(job, reason)

    def _serve(self) -> None:
        while True:
            self._deliver(block=not self._running)
            # Block only when idle; otherwise take whatever arrived since the last step.
            if not self._running and not self._admit(self._inbox.get()):
                return
            while not self._inbox.empty():
                if not self._admit(self._inbox.get_nowait()):
                    return
            self.step()

    def run_until_idle(self) -> None:
        """Drive the submitted requests to completion on the calling thread (offline use, tests)."""
        while self.poll():
            pass
        self._deliver(block=True)

    def poll(self) -> bool:
        """On the calling thread: admit what has arrived, take one step, answer the requests whose
        images are already on the host. False when nothing was left to step."""
        while not self._inbox.empty():
            self._admit(self._inbox.get_nowait())
        if not self._running:
            return False
        self.step()
        self._deliver(block=False)
        return True

    def _admit(self, job: Job | None) -> bool:
        if job is None:
            return False
        admission, job.admission = job.admission, None
        assert admission is not None, "jobs are prepared by submit"
        job.slots = np.array([self._free.pop() for _ in range(len(admission.lengths))], np.int64)
        try:
            self.stepper.admit(job.slots, admission)
        except Exception as err:  # noqa: BLE001 - a failed admission fails its request, not the server
            log.exception("admitting a request failed")
            self._fail(job, f"could not start sampling: {err}")
            return True
        self._position[job.slots] = 0
        self._length[job.slots] = admission.lengths
        images = job.images
        self._stochastic[job.slots] = images.eta > 0
        self._guided[job.slots] = False if images.guidance is None else images.guidance != 1
        self._order = np.concatenate([self._order, job.slots])
        for slot in job.slots.tolist():
            self._owner[slot] = job
        job.unfinished = len(job.slots)
        self._running.add(job)
        return True

    def step(self) -> None:
        """One U-Net call over the oldest requests' unfinished images, then answer whoever finished."""
        selection = self._select()
        if len(selection) == 0:
            return
        try:
            self.stepper.advance(selection, bool(self._guided[selection].any()), bool(self._stochastic[selection].any()))
        except Exception as err:  # noqa: BLE001 - a failed step fails the requests in it, not the server
            log.exception("a denoising step failed")
            failed = {self._owner[slot] for slot in selection.tolist()}
            self._order = self._order[~np.isin(self._order, np.concatenate([j.slots for j in failed]))]
            for job in failed:
                self._running.discard(job)
                self._fail(job, f"denoising failed: {err}")
            return
        self.counters.unet_calls += 1
        self.counters.images_stepped += len(selection)
        self._position[selection] += 1
        finished = selection[self._position[selection] == self._length[selection]]
        if len(finished) == 0:
            return
        self._order = self._order[self._position[self._order] < self._length[self._order]]
        done = []
        for slot in finished.tolist():
            job = self._owner[slot]
            job.unfinished -= 1
            if job.unfinished == 0:
                done.append(job)
        for job in done:
            self._running.discard(job)
            self._finish(job)

    def _select(self) -> np.ndarray:
        return self._order[: self.max_batch]

    def _finish(self, job: Job) -> None:
        """Start copying a finished request's images out; the slots are free for the next step at once
        (the copy is queued before anything that could overwrite them)."""
        try:
            readback = self.stepper.images(job.slots)
        except Exception as err:  # noqa: BLE001
            log.exception("reading finished images failed")
            self._fail(job, f"could not read the finished images: {err}")
            return
        self._release(job)
        self._deliveries.append((job, readback))

    def _deliver(self, block: bool) -> None:
        """Answer the finished requests whose images have reached the host (all of them if `block`)."""
        waiting = []
        for job, readback in self._deliveries:
            if not (block or readback.ready()):
                waiting.append((job, readback))
                continue
            try:
                images = readback.result()
            except Exception as err:  # noqa: BLE001
                log.exception("reading finished images failed")
                self.counters.requests_failed += 1
                _notify(job.failed, f"could not read the finished images: {err}")
                continue
            self.counters.requests_done += 1
            _notify(job.done, images)
        self._deliveries = waiting

    def _fail(self, job: Job, message: str) -> None:
        self._release(job)
        self.counters.requests_failed += 1
        _notify(job.failed, message)

    def _release(self, job: Job) -> None:
        for slot in job.slots.tolist():
            self._owner[slot] = None
        self._free.extend(job.slots.tolist())
        with self._lock:
            self._admitted -= len(job.images)
        job.slots = job.slots[:0]


def _notify(callback: Callable[[T], None], value: T) -> None:
    """Run a job's callback; its failure (a client gone, say) must not stop the worker."""
    try:
        callback(value)
    except Exception:  # noqa: BLE001
        log.exception("a request's completion callback failed")
