"""The Hugging Face diffusers peers of `ddpm-triton bench` (issue 5), measured in-process on the same device.

A diffusers `DDPMPipeline` (or `DDIMPipeline` for DDIM rows) around a `UNet2DModel` configured as the CIFAR-10
DDPM of Ho et al. (google/ddpm-cifar10-32's architecture, 35.7M parameters, random weights: timing needs no
training), in the configurations issue 5 names:

| name | what it is |
| --- | --- |
| `diffusers-fp32-eager` | the pipeline as documented: fp32 weights, eager PyTorch |
| `diffusers-fp16-compiled` | fp16 weights, channels_last, `torch.compile(unet, mode="reduce-overhead")` (CUDA graphs) |

Every measured call is a whole pipeline call, `pipeline(batch_size=B, num_inference_steps=S, generator=g,
output_type="np")`: noise drawn on the device, S U-Net calls and scheduler steps, and the copy of the images to
host memory (which synchronises the GPU). Warm-up calls (where compilation and CUDA-graph capture happen) are
timed apart and not counted. `preset="tiny"` is a small U-Net of the same block types for CPU smoke runs.

diffusers is imported only inside these functions: nothing else in the package needs it.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class PeerConfig:
    """How a peer runs its U-Net."""

    precision: str  # "fp32" | "fp16": the dtype of the U-Net's weights (and of the pipeline's tensors)
    channels_last: bool
    compile_mode: str | None  # torch.compile mode of the U-Net; None = eager


PEERS: dict[str, PeerConfig] = {
    "diffusers-fp32-eager": PeerConfig("fp32", channels_last=False, compile_mode=None),
    "diffusers-fp16-compiled": PeerConfig("fp16", channels_last=True, compile_mode="reduce-overhead"),
}

# UNet2DModel arguments. "cifar10" is google/ddpm-cifar10-32's config.json (Ho et al.: ch 128, mult 1,2,2,2,
# 2 res blocks, attention at 16x16); "tiny" keeps its block types at a size a CPU runs in milliseconds.
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
        "block_out_channels": (128, 256, 256, 256),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 32,
        "attention_head_dim": None, "act_fn": "silu", "time_embedding_type": "positional",
    },
    "tiny": {
        "sample_size": 16, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 8,
        "attention_head_dim": None, "act_fn": "silu", "time_embedding_type": "positional",
    },
}  # fmt: skip

# DDPMScheduler as in Ho et al. (google/ddpm-cifar10-32's scheduler_config.json); DDIM uses the same betas.
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
             "clip_sample": True}  # fmt: skip
SAMPLERS = ("ddpm", "ddim")
DDIM_ETA = 0.0


class Peer:
    """One U-Net on one device, with a pipeline per sampler around it.

    Keep it across batch sizes and samplers: a compiled U-Net is then compiled once per batch size (dynamo's
    recompile limit, 8 by default, bounds how many batch sizes one U-Net takes before it falls back to eager).
    """

    def __init__(self, name: str, device: str | torch.device, preset: str = "cifar10", seed: int = 0) -> None:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; expected one of {sorted(PEERS)}")
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        import diffusers
        from diffusers import UNet2DModel

        self.name, self.preset, self.seed = name, preset, seed
        self.config = PEERS[name]
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[self.config.precision]
        self.gpu_mb_before_build = _allocated_mb(self.device)

        with torch.random.fork_rng(devices=[]):  # random weights without touching the caller's RNG state
            torch.manual_seed(seed)
            unet = UNet2DModel(**PRESETS[preset])
        self.parameters = sum(p.numel() for p in unet.parameters())
        unet = unet.to(self.device).eval().requires_grad_(False)
        if dtype == torch.float16:
            unet = unet.half()  # not .to(dtype=...): diffusers warns there even when no module is kept in fp32
        if self.config.channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        if self.config.compile_mode is not None:
            # dynamic=False: kernels specialised to each batch size (one recompile per new batch size).
            unet = torch.compile(unet, mode=self.config.compile_mode, dynamic=False)
        self.unet = unet
        self.pipelines: dict[str, Any] = {}
        self.diffusers_version = diffusers.__version__
        self.unet_config = dict(PRESETS[preset])
        self.compiled_batches: set[int] = set()

    def pipeline(self, sampler: str = "ddpm") -> Any:
        """DDPMPipeline + DDPMScheduler ("ddpm") or DDIMPipeline + DDIMScheduler ("ddim"), around this U-Net."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        if sampler not in self.pipelines:
            from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

            if sampler == "ddpm":
                pipeline = DDPMPipeline(unet=self.unet, scheduler=DDPMScheduler(**SCHEDULER))
            else:
                pipeline = DDIMPipeline(unet=self.unet, scheduler=DDIMScheduler(**SCHEDULER))
            pipeline.set_progress_bar_config(disable=True)
            self.pipelines[sampler] = pipeline
        return self.pipelines[sampler]

    def __call__(self, batch: int, steps: int, sampler: str = "ddpm", seed: int | None = None) -> np.ndarray:
        """One pipeline call: float images in [0, 1], [batch, H, W, C], in host memory."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed if seed is None else seed)
        kwargs: dict[str, Any] = {"batch_size": batch, "num_inference_steps": steps, "generator": generator,
                                  "output_type": "np"}  # fmt: skip
        if sampler == "ddim":
            kwargs["eta"] = DDIM_ETA
        images = self.pipeline(sampler)(**kwargs).images
        size = self.unet_config["sample_size"]
        expected = (batch, size, size, self.unet_config["out_channels"])
        if not isinstance(images, np.ndarray) or images.shape != expected:
            raise RuntimeError(f"{self.name}: pipeline returned {getattr(images, 'shape', type(images))}, "
                               f"expected an array of shape {expected}")  # fmt: skip
        return images

    def measure(self, batch: int, steps: int, repeats: int = 3, sampler: str = "ddpm", warmup_calls: int = 2,
                warmup_steps: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Time `repeats` pipeline calls after `warmup_calls` untimed ones; see `measure_peer` for the result."""
        if batch < 1 or steps < 1 or repeats < 1:
            raise ValueError(f"batch, steps and repeats must be >= 1, got {batch}, {steps}, {repeats}")
        # Warm-up at the measured batch size: compilation, CUDA-graph capture (reduce-overhead records on the
        # first calls of a shape), cuDNN algorithm choice and the allocator all happen here. Few steps suffice:
        # every step calls the U-Net with the same shapes.
        warmup_steps = min(steps, 4) if warmup_steps is None else warmup_steps
        cuda = self.device.type == "cuda"
        started = time.perf_counter()
        for _ in range(warmup_calls):
            self(batch, warmup_steps, sampler)
        if cuda:
            torch.cuda.synchronize(self.device)
        warmup_s = time.perf_counter() - started
        self.compiled_batches.add(batch)

        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times, images = [], None
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            images = self(batch, steps, sampler)  # output_type="np" copies to the host: the GPU work is done
            times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None
        # CUDA-graph replays allocate nothing, so the compiled peer's activations (in the graphs' private pool)
        # show in reserved memory, not in allocated memory.
        reserved = torch.cuda.max_memory_reserved(self.device) / 2**20 if cuda else None
        assert images is not None
        p50 = float(np.median(times))
        return {
            "system": self.name,
            "via_triton": False,
            "precision": self.config.precision,
            "format": "diffusers",
            "batch": batch,
            "concurrency": 1,
            "steps": steps,
            "sampler": sampler,
            "images_per_s": batch / p50,
            "p50_ms": p50 * 1000,
            "p99_ms": float(np.percentile(times, 99)) * 1000,
            "ms_per_step": p50 * 1000 / steps,
            "peak_gpu_mb": peak,
            "peak_gpu_reserved_mb": reserved,
            "warmup_s": warmup_s,
            "times_ms": [t * 1000 for t in times],
            "output_shape": list(images.shape),
            "output_finite": bool(np.isfinite(images).all()),
            "settings": self.settings(batch, steps, sampler, repeats, warmup_calls, warmup_steps),
        }

    def settings(self, batch: int, steps: int, sampler: str, repeats: int, warmup_calls: int,
                 warmup_steps: int) -> dict[str, Any]:  # fmt: skip
        """Everything needed to re-create the measurement."""
        limit = None
        if self.config.compile_mode is not None:
            dynamo = torch._dynamo.config
            limit = getattr(dynamo, "recompile_limit", None) or getattr(dynamo, "cache_size_limit", None)
        return {
            "peer": self.name,
            **asdict(self.config),
            "compile_dynamic": False if self.config.compile_mode else None,
            "compiled_batch_sizes_so_far": sorted(self.compiled_batches) if self.config.compile_mode else None,
            "dynamo_recompile_limit": limit,
            "pipeline": type(self.pipeline(sampler)).__name__,
            "scheduler": type(self.pipeline(sampler).scheduler).__name__,
            "scheduler_config": dict(SCHEDULER),
            "eta": DDIM_ETA if sampler == "ddim" else None,
            "preset": self.preset,
            "unet": "UNet2DModel",
            "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.unet_config.items()},
            "parameters": self.parameters,
            "weights": f"random (torch.manual_seed({self.seed}), diffusers' default init)",
            "call": f"pipeline(batch_size={batch}, num_inference_steps={steps}, generator=torch.Generator("
                    f"device={str(self.device)!r}).manual_seed({self.seed}), output_type='np'"
                    + (f", eta={DDIM_ETA}" if sampler == "ddim" else "") + ")",
            "repeats": repeats,
            "warmup_calls": warmup_calls,
            "warmup_steps": warmup_steps,
            "images_per_s_from": "batch / median call time",
            "p99_from": "numpy.percentile(call times, 99) (linear interpolation; = max for few repeats)",
            "peak_gpu_mb_is": "torch.cuda.max_memory_allocated over the timed calls, MiB, whole process "
                              "(reset after warm-up); misses CUDA-graph pools, see peak_gpu_reserved_mb",
            "gpu_mb_allocated_before_build": self.gpu_mb_before_build,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "torch": torch.__version__,
            "diffusers": self.diffusers_version,
        }  # fmt: skip


_PEERS: dict[tuple[str, str, str, int], Peer] = {}


def get_peer(name: str, device: str | torch.device, preset: str = "cifar10", seed: int = 0) -> Peer:
    """The peer built once per (name, device, preset, seed) in this process; `release_peers` frees them."""
    key = (name, str(torch.device(device)), preset, seed)
    if key not in _PEERS:
        _PEERS[key] = Peer(name, device, preset, seed)
    return _PEERS[key]


def release_peers() -> None:
    """Drop every cached peer and give their GPU memory back (call before measuring something else's memory)."""
    _PEERS.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_peer(
    name: str, batch: int, steps: int, device: str | torch.device = "cpu", repeats: int = 3, *,
    preset: str = "cifar10", sampler: str = "ddpm", seed: int = 0, warmup_calls: int = 2,
    warmup_steps: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Time `repeats` whole pipeline calls of peer `name` (a key of PEERS) on `device` ("cpu", "cuda", "cuda:1").

    Returns the result-row fields `system` (= name), `via_triton` (False), `precision`, `format` ("diffusers"),
    `batch`, `concurrency` (1), `steps`, `sampler`, `images_per_s` (batch / median call time), `p50_ms` and
    `p99_ms` (per pipeline call), `peak_gpu_mb` (torch.cuda.max_memory_allocated over the timed calls, MiB,
    whole process; None on a CPU), and besides them:
    `peak_gpu_reserved_mb` (max_memory_reserved: CUDA-graph replays of the compiled peer allocate nothing, so
    their activations show here and not in peak_gpu_mb), `ms_per_step`, `warmup_s` (the untimed warm-up calls,
    compilation included), `times_ms`, `output_shape`, `output_finite` and `settings` (all that re-creates it).

    The peer is built on first use and kept (`get_peer`; `release_peers` frees it); the compiled peer compiles
    in the warm-up of each new batch size. Seen on an H100 (torch 2.11, 2026-11-23): about 100 s for the first
    batch size, about 20 s for each further one; nothing for a sampler change at a batch size already compiled.
    """
    peer = get_peer(name, device, preset, seed)
    return peer.measure(batch, steps, repeats, sampler, warmup_calls=warmup_calls, warmup_steps=warmup_steps)


def _allocated_mb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
