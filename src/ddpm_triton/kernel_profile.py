"""Where one U-Net call spends its GPU time, by kind of kernel (benchmarks/unet_kernels.py).

The 1000-step goal is a question about kernels, not serving: the compiled U-Net runs at the same
speed as diffusers' and well above the FLOP floor. Binning the kernels of one call (cuDNN
convolutions, cuBLAS matmuls, attention, Inductor's generated Triton kernels for GroupNorm, SiLU
and the residual adds) says which of them a faster path would have to replace.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .stepper import UNetFn


def kernel_category(name: str) -> str:
    """The kind of a CUDA kernel, from its name. Order matters: Inductor names its kernels after the
    ops they fuse ("..._convolution_native_group_norm_silu"), and cuDNN's attention kernels are
    "fprop" kernels too."""
    n = name.lower()
    if n.startswith("triton_"):
        return "inductor"
    if n.startswith("_group_norm"):  # the project's own Triton kernels (ddpm_triton.kernels)
        return "groupnorm"
    if n.startswith("_linear"):
        return "matmul"
    if "sdpa" in n or "flash" in n or "fmha" in n:
        return "attention"
    if "fprop" in n or "conv" in n or "xmma" in n:
        return "convolution"
    if "nvjet" in n or "gemm" in n or "cutlass" in n:
        return "matmul"
    return "other"


@dataclass(frozen=True)
class KernelTime:
    name: str
    category: str
    calls: float  # per U-Net call
    ms: float  # per U-Net call


def summarize(kernels: Iterable[tuple[str, float, int]], unet_calls: int) -> tuple[list[KernelTime], dict[str, float]]:
    """(name, total microseconds, launches) over `unet_calls` calls -> the kernels by time, and ms per
    call of each category, both per U-Net call."""
    times: collections.Counter[str] = collections.Counter()
    launches: collections.Counter[str] = collections.Counter()
    for name, us, count in kernels:
        times[name] += us
        launches[name] += count
    rows = [KernelTime(name, kernel_category(name), launches[name] / unet_calls, us / unet_calls / 1000)
            for name, us in times.most_common()]  # fmt: skip
    categories: collections.Counter[str] = collections.Counter()
    for row in rows:
        categories[row.category] += row.ms
    return rows, dict(categories.most_common())


def profile_unet(unet: UNetFn, batch: int, image_shape: tuple[int, int, int], calls: int = 5) -> list[tuple[str, float, int]]:
    """(kernel name, total GPU microseconds, launches) of `calls` calls at `batch`, warmed up first."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(batch, *image_shape, device="cuda")
    t = torch.full((batch,), 500.0, device="cuda")
    for _ in range(3):  # compilation, autotuning, allocator
        unet(x, t, None)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            unet(x, t, None)
        torch.cuda.synchronize()
    return [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages() if e.self_device_time_total > 0]
