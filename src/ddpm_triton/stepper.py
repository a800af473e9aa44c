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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .diffusion import Diffusion, guide
from .noise import SeededNoise
from .sampling import to_uint8

UNetFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""(x [B, C, H, W] float32, t [B] float32, labels [B] int or None) -> eps [B, C, H, W] float32."""

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
        self.cuda_graphs = cuda_graphs
        self.buckets = buckets(max_batch)
        self._graphs: dict[StepKind, _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
        self._in_flight: collections.deque[torch.cuda.Event] = collections.deque()

    # ---- slots -----------------------------------------------------------------------------------

    def admit(
        self,
        slots: np.ndarray,
        seeds: np.ndarray,
        schedules: Sequence[Sequence[int]],
        eta: np.ndarray,
        labels: np.ndarray | None,
        guidance: np.ndarray | None,
    ) -> None:
        """Fill `slots` with new images at x_T, each with its own schedule (descending timesteps)."""
        index = self._device(slots)
        table = np.full((len(slots), self.schedule.shape[1]), -1, np.int64)
        for row, schedule in zip(table, schedules):
            row[: len(schedule)] = schedule
        seeds_t = self._device(seeds)
        with torch.inference_mode():
            self.schedule.index_copy_(0, index, self._device(table))
            self.position.index_fill_(0, index, 0)
            self.seeds.index_copy_(0, index, seeds_t)
            self.eta.index_copy_(0, index, self._device(eta.astype(np.float32)))
            # Absent options reset the slot (null label, no guidance): a reused slot keeps nothing.
            n = len(slots)
            labels = np.full(n, self.null_label or 0, np.int64) if labels is None else labels
            guidance = np.ones(n, np.float32) if guidance is None else guidance.astype(np.float32)
            self.labels.index_copy_(0, index, self._device(labels))
            self.guidance.index_copy_(0, index, self._device(guidance))
            self.x.index_copy_(0, index, self._device(self._initial_noise(torch.from_numpy(seeds), 0).numpy()))

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

    def warm_up(self, guided: bool, stochastic: bool) -> None:
        """Capture the graphs of every bucket now rather than in the first requests' path."""
        if self.cuda_graphs:
            with torch.inference_mode():
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
        z = self.noise(self.seeds[slots], t + 1) if stochastic else None
        x_prev, _ = self.diffusion.step(x, eps.to(x.dtype), t, t_prev, self.eta[slots], z)
        self.x.index_copy_(0, slots, x_prev)
        # Padding (the scratch slot) never moves along its schedule.
        self.position.index_copy_(0, slots, position + (slots != self.scratch).long())

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
        if len(self._in_flight) > RUN_AHEAD:
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
