"""One denoising step over any selection of in-flight images: the engine of step-level batching.

Every image being sampled owns a slot: a row of the state `x` and of the per-slot tables (its
timestep schedule, its position in it, seed, eta, label, guidance scale). `advance` moves a
selection of slots one step along their own schedules, so images of different requests, step
counts and samplers share one U-Net batch (the per-sample timesteps of `Diffusion.step` make that
exact). Everything a step reads lives on the device and the selection is the only input, so on a
GPU a step is a fixed sequence of kernels: it is captured once per (bucket size, guided,
stochastic) as a CUDA graph and replayed without a host round trip. Selections are padded to the
bucket with a scratch slot whose results are never read.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .diffusion import Diffusion, guide
from .noise import SeededNoise
from .sampling import timesteps, to_uint8

UNetFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""(x [B, C, H, W] float32, t [B] float32, labels [B] int or None) -> eps [B, C, H, W] float32."""

INITIAL_NOISE_RUN = 32
"""Images per task when a request's x_T is drawn on the host's threads (`Stepper.prepare`)."""

RUN_AHEAD = 2
"""Steps the host may queue ahead of the GPU: enough to hide launch overhead, few enough that a
request admitted now joins a step that starts within about two step times."""


@dataclass(frozen=True)
class StepKind:
    """What selects a captured graph: the padded selection size and the two data-dependent branches."""

    size: int
    guided: bool  # some image has a guidance scale other than 1: the U-Net runs on [cond; uncond]
    stochastic: bool  # some image has eta > 0: noise is drawn and added


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    slots: torch.Tensor  # static input: the selection, padded with the scratch slot
    last: np.ndarray | None = None  # the selection the static inputs hold now


def buckets(max_size: int) -> list[int]:
    """Powers of two from 2 up to `max_size`, and `max_size` itself: at most 2x padding, few graphs.

    No bucket of 1: torch.compile specialises a batch of 1 apart from every other size (a second
    compilation of minutes), and one image costs the same kernel launches as two.
    """
    sizes = [1 << i for i in range(1, max_size.bit_length()) if 1 << i < max_size]
    return [*sizes, max(max_size, 2)]


def compile_update(update: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`Stepper.sampler_update` as the GPU step path runs it.

    Eager, the update is some eighty kernels per step (the noise hash alone is sixty): 0.31 ms of a
    DDPM step at batch 256 on an H100, 0.04 compiled (benchmarks/sampler_update.py). One
    dynamic-shape compilation serves every bucket: the kernels are elementwise.
    """
    return torch.compile(update, dynamic=True)


@functools.lru_cache(maxsize=None)
def _schedule(num_train_steps: int, steps: int) -> np.ndarray:
    """`timesteps` of one step count, computed once per process: requests ask for few distinct counts."""
    schedule = np.array(timesteps(num_train_steps, steps), np.int64)
    schedule.setflags(write=False)
    return schedule


@dataclass(frozen=True)
class Admission:
    """A request's images ready to enter slots (host tensors, pinned for a GPU): see `Stepper.prepare`."""

    x: torch.Tensor  # [n, C, H, W] float32: x_T
    schedule: torch.Tensor  # [n, max_steps + 1] int64: each image's descending timesteps, then -1
    seeds: torch.Tensor  # [n] int64
    eta: torch.Tensor  # [n] float32
    labels: torch.Tensor  # [n] int64
    guidance: torch.Tensor  # [n] float32
    lengths: np.ndarray  # [n] int64: steps of each image


class Stepper:
    """The device-resident state of `capacity` slots and the step that advances any of them."""

    def __init__(
        self,
        unet: UNetFn,
        diffusion: Diffusion,
        image_shape: tuple[int, int, int],
        capacity: int,
        max_steps: int,
        null_label: int | None,
        device: torch.device,
        cuda_graphs: bool = False,
        max_batch: int = 64,
        run_ahead: int = RUN_AHEAD,
    ) -> None:
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.unet, self.diffusion, self.device = unet, diffusion, device
        self.null_label = null_label
        self.capacity, self.max_batch = capacity, max_batch
        self.scratch = capacity
        rows = capacity + 1

        def table(fill: float, dtype: torch.dtype, *shape: int) -> torch.Tensor:
            return torch.full((rows, *shape), fill, dtype=dtype, device=device)

        self.x = table(0.0, torch.float32, *image_shape)
        # Each schedule ends in -1 ("after the last step"): t_prev of the final step reads it.
        self.schedule = table(-1, torch.int64, max_steps + 1)
        self.schedule[self.scratch, 0] = diffusion.timesteps - 1  # keeps the scratch slot's math finite
        self.position = table(0, torch.int64)
        self.seeds = table(0, torch.int64)
        self.eta = table(0.0, torch.float32)
        self.labels = table(null_label or 0, torch.int64)
        self.guidance = table(1.0, torch.float32)
        self.noise = SeededNoise(image_shape, device)
        # x_T is drawn on the host and copied once: on the device its hash is some sixty tiny kernels
        # queued between steps (a quarter of the stepping thread's time with 64 clients on an H100).
        self._initial_noise = SeededNoise(image_shape)
        self._noise_threads = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="ddpm-x-T")
        self.cuda_graphs = cuda_graphs
        self._update = compile_update(self.sampler_update) if cuda_graphs else self.sampler_update
        self.run_ahead = run_ahead  # steps the host may queue ahead of the GPU
        self.buckets = buckets(max_batch)
        self._graphs: dict[StepKind, _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
        self._in_flight: collections.deque[torch.cuda.Event] = collections.deque()

    # ---- slots -----------------------------------------------------------------------------------

    def prepare(
        self, seeds: np.ndarray, steps: np.ndarray, eta: np.ndarray, labels: np.ndarray | None, guidance: np.ndarray | None
    ) -> Admission:
        """Everything `admit` will copy into slots for these images, computed on the host.

        Called from the submitting thread (Triton's `execute`), so that the stepping thread only
        copies: drawing x_T and building the schedule rows were half of its host time with 64
        single-image clients (benchmarks/scheduler_overhead.py). Reads nothing that a step changes.
        """
        n = len(seeds)
        table = np.full((n, self.schedule.shape[1]), -1, np.int64)
        schedules = [_schedule(self.diffusion.timesteps, count) for count in steps.tolist()]
        for row, schedule in zip(table, schedules):
            row[: len(schedule)] = schedule
        # Absent options reset the slot (null label, no guidance): a reused slot keeps nothing.
        labels = np.full(n, self.null_label or 0, np.int64) if labels is None else labels
        guidance = np.ones(n, np.float32) if guidance is None else guidance
        x = self._draw_initial_noise(torch.from_numpy(np.ascontiguousarray(seeds, np.int64)))
        host = [x, *(torch.from_numpy(np.ascontiguousarray(a, d)) for a, d in (
            (table, np.int64), (seeds, np.int64), (eta, np.float32), (labels, np.int64), (guidance, np.float32)))]
        if self.device.type == "cuda":  # pinned: the copies in `admit` do not stall the stepping thread
            host = [t.pin_memory() for t in host]
        return Admission(*host, lengths=np.array([len(s) for s in schedules], np.int64))

    def _draw_initial_noise(self, seeds: torch.Tensor) -> torch.Tensor:
        """x_T of `seeds`, in runs of INITIAL_NOISE_RUN images on threads of their own.

        The server's stub runs torch on one intra-op thread (serving/ddpm_model.py says why), and
        there a 256-image request waited for its x_T before its first step: through Triton on the
        H100 its 50 DDIM steps took 413 ms at p50 against 352 in-process, and 330 with the runs
        (benchmarks/README.md). torch releases the GIL, so the runs overlap. An image's noise
        depends on its seed alone, so runs give the same bits as one draw.
        """
        runs = seeds.split(INITIAL_NOISE_RUN)
        if len(runs) == 1:
            return self._initial_noise(seeds, 0)
        return torch.cat(list(self._noise_threads.map(lambda run: self._initial_noise(run, 0), runs)))

    def admit(self, slots: np.ndarray, admission: Admission) -> None:
        """Fill `slots` with the prepared images at x_T, each at the start of its own schedule."""
        index = self._device(slots)
        a = admission
        with torch.inference_mode():
            for table, values in ((self.x, a.x), (self.schedule, a.schedule), (self.seeds, a.seeds),
                                  (self.eta, a.eta), (self.labels, a.labels), (self.guidance, a.guidance)):  # fmt: skip
                table.index_copy_(0, index, values.to(self.device, non_blocking=True))
            self.position.index_fill_(0, index, 0)

    def images(self, slots: np.ndarray) -> Readback:
        """uint8 [n, H, W, C] of finished slots, on their way to host memory (the slots may be reused at once)."""
        with torch.inference_mode():
            return Readback(to_uint8(self.x[self._device(slots)]))

    # ---- the step --------------------------------------------------------------------------------

    def advance(self, slots: np.ndarray, guided: bool, stochastic: bool) -> None:
        """One step of every slot in `slots` (at most max_batch, no duplicates)."""
        with torch.inference_mode():
            if not self.cuda_graphs:
                self._step(self._device(slots), guided, stochastic)
                return
            size = next(b for b in self.buckets if b >= len(slots))
            captured = self._captured(StepKind(size, guided, stochastic))
            padded = np.full(size, self.scratch, np.int64)
            padded[: len(slots)] = slots
            if captured.last is None or not np.array_equal(captured.last, padded):
                captured.slots.copy_(self._device(padded))
                captured.last = padded
            captured.graph.replay()
            self._bound_run_ahead()

    def warm_up(self, guided: bool) -> None:
        """Capture the graphs of every bucket, for both samplers (with and without noise), now rather
        than in the first requests' path.

        Each capture runs the step as requests do, so the sampler update compiles for the tensors it
        will get. Compiling it instead from a hand-made call left the noise-drawing variant to
        recompile inside the first DDPM request (most likely for eps's layout: the U-Net returns it
        channels_last, the hand-made call passed it contiguous). On the H100 that request ran
        1.5-2.9 s over the median, and the server's compile workers came back (benchmarks/README.md).
        """
        if self.cuda_graphs:
            with torch.inference_mode():
                for stochastic in (False, True):
                    for size in self.buckets:
                        self._captured(StepKind(size, guided, stochastic))

    def _step(self, slots: torch.Tensor, guided: bool, stochastic: bool) -> None:
        position = self.position[slots]
        t = self.schedule[slots, position]
        t_prev = self.schedule[slots, position + 1]
        x = self.x[slots]
        labels = self.labels[slots] if self.null_label is not None else None
        if guided and labels is not None:
            both = self.unet(torch.cat([x, x]), torch.cat([t, t]).float(), torch.cat([labels, torch.full_like(labels, self.null_label)]))
            eps = guide(*both.chunk(2), self.guidance[slots])
        else:
            eps = self.unet(x, t.float(), labels)
        x_prev = self._update(x, eps, t, t_prev, self.eta[slots], self.seeds[slots], stochastic)
        self.x.index_copy_(0, slots, x_prev)
        # Padding (the scratch slot) never moves along its schedule.
        self.position.index_copy_(0, slots, position + (slots != self.scratch).long())

    def sampler_update(
        self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, eta: torch.Tensor,
        seeds: torch.Tensor, stochastic: bool,
    ) -> torch.Tensor:  # fmt: skip
        """x_{t_prev} of the selected images: the noise they draw at this step, then `Diffusion.step`."""
        z = self.noise(seeds, t + 1) if stochastic else None
        return self.diffusion.step(x, eps.to(x.dtype), t, t_prev, eta, z)[0]

    def _captured(self, kind: StepKind) -> _Captured:
        captured = self._graphs.get(kind)
        if captured is None:
            slots = torch.full((kind.size,), self.scratch, dtype=torch.int64, device=self.device)
            # Warm-up runs (compilation, cuDNN autotuning, allocator) happen off the capture stream.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step(slots, kind.guided, kind.stochastic)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(slots, kind.guided, kind.stochastic)
            captured = self._graphs[kind] = _Captured(graph, slots)
        return captured

    def _bound_run_ahead(self) -> None:
        event = torch.cuda.Event()
        event.record()
        self._in_flight.append(event)
        if len(self._in_flight) > self.run_ahead:
            self._in_flight.popleft().synchronize()

    def _device(self, values: np.ndarray) -> torch.Tensor:
        """Host values on the device without stalling the host: pinned memory, asynchronous copy.

        PyTorch's pinned-memory cache does not hand the buffer out again before the copy is done.
        """
        tensor = torch.from_numpy(np.ascontiguousarray(values))
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)


class Readback:
    """Images copied to host memory behind the queued GPU work: the worker polls instead of waiting."""

    def __init__(self, images: torch.Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        if images.is_cuda:
            self._host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
            self._host.copy_(images, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = images

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def result(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy().copy()
