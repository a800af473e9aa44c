"""The fp8 precision against fp16, on a GPU: the whole U-Net per batch, and its GroupNorm kernel alone.

The U-Net rows are one compiled call of the CIFAR-10 U-Net (random weights) replayed as a CUDA
graph, as the server's stepper runs it; they are where `runners.FP8_MIN_BATCH` comes from. The
GroupNorm rows time `ddpm_triton.kernels.group_norm` (fp16 and FP8 output) against torch.compile's
GroupNorm+SiLU of the same channels_last tensor, at the U-Net's shapes, ten calls to a CUDA graph
as the U-Net runs them: timed one launch at a time (`triton.testing.do_bench`, the records before
2026-11-24), the small shapes measured the host's launch cost, not the kernel. Beside them, the
streaming kernel alone (`streaming_ms`: what the op ran before images of up to 16x16 went to the
register-resident kernel) and a one-pass copy of the same bytes (fp16 read, FP8 written:
`copy_ms`, the floor). Needs an sm_89+ GPU.

    python benchmarks/fp8_speed.py --batches 2,8,32,64,128,256
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_triton.bench import random_checkpoint
from ddpm_triton.kernels.group_norm import _launch_streaming, group_norm
from ddpm_triton.provenance import stamp, write_result
from ddpm_triton.runners import FP8_MIN_BATCH, load_runner

# (channels, height = width): the U-Net's GroupNorm shapes, concatenations as one tensor
NORM_SHAPES = [(128, 32), (256, 32), (384, 32), (256, 16), (384, 16), (512, 16), (256, 8), (512, 8), (256, 4)]


def graphed_ms(fn: Callable[[], object], replays: int = 30) -> float:
    """Median time of one replay of `fn` captured as a CUDA graph (warmed up on a side stream first)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[replays // 2]


def unet_rows(batches: list[int]) -> Iterator[dict[str, float]]:
    checkpoint = random_checkpoint("cifar10", Path(tempfile.mkdtemp()) / "model.safetensors")
    # The fp16 U-Net inside each runner, so neither switches precision by batch.
    modules = {p: load_runner(checkpoint, "cuda", precision=p, compile=True).module for p in ("fp16", "fp8")}
    for batch in batches:
        x = torch.randn(batch, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, 1000, (batch,), device="cuda").float()
        row: dict[str, float] = {"batch": batch}
        with torch.inference_mode():
            for precision, module in modules.items():
                row[f"{precision}_ms"] = graphed_ms(lambda: module(x, t))
        row["fp8_speedup"] = row["fp16_ms"] / row["fp8_ms"]
        print(f"batch {batch:4d}: fp16 {row['fp16_ms']:.3f} ms, fp8 {row['fp8_ms']:.3f} ms, {row['fp8_speedup']:.2f}x", flush=True)
        yield row


def graphed_call_ms(fn: Callable[[], object], calls: int = 10) -> float:
    """One call's share of a CUDA graph of `calls` back-to-back calls of `fn`."""
    return graphed_ms(lambda: [fn() for _ in range(calls)]) / calls


def norm_rows(batch: int) -> list[dict[str, float]]:
    compiled = torch.compile(lambda x, w, b: F.silu(F.group_norm(x, 32, w, b, 1e-5)))
    rows = []
    for channels, size in NORM_SHAPES:
        x = (torch.randn(batch, channels, size, size, device="cuda") * 2 + 0.5).half()
        x = x.contiguous(memory_format=torch.channels_last)
        weight, bias = torch.rand(channels, device="cuda") + 0.5, torch.randn(channels, device="cuda") * 0.1
        expected = F.silu(F.group_norm(x.float(), 32, weight, bias, 1e-5))
        row: dict[str, float] = {"channels": channels, "size": size}
        for name, fp8 in (("fp16_out", False), ("fp8_out", True)):
            out = group_norm(x, None, weight, bias, 32, 1e-5, True, fp8, None)
            row[f"{name}_rel_err"] = ((out.float() - expected).norm() / expected.norm()).item()
            row[f"{name}_ms"] = graphed_call_ms(lambda: group_norm(x, None, weight, bias, 32, 1e-5, True, fp8, None))
        out = torch.empty_like(x, dtype=torch.float8_e4m3fn)
        streaming = (x, None, None, weight, bias, out, 32, 1e-5, True, None)
        row["streaming_ms"] = graphed_call_ms(lambda: _launch_streaming(*streaming))
        row["copy_ms"] = graphed_call_ms(lambda: x.to(torch.float8_e4m3fn))
        row["compiled_ms"] = graphed_call_ms(lambda: compiled(x, weight.half(), bias.half()))
        # Useful bytes: the fp16 input read once and the output written once.
        row["fp8_out_GBps"] = x.numel() * 3 / row["fp8_out_ms"] / 1e6
        row["compiled_GBps"] = x.numel() * 4 / row["compiled_ms"] / 1e6
        rows.append(row)
        print(f"GroupNorm+SiLU {channels}x{size}x{size}: fp8 out {row['fp8_out_ms']:.4f} ms (streaming "
              f"{row['streaming_ms']:.4f}, copy {row['copy_ms']:.4f}), fp16 out {row['fp16_out_ms']:.4f}, "
              f"compiled {row['compiled_ms']:.4f}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="2,8,32,64,128,256")
    parser.add_argument("--norm-batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("fp8_speed.py times CUDA kernels: it needs a GPU")
    record = {
        **stamp("cuda", shlex.join(["python", "benchmarks/fp8_speed.py", *sys.argv[1:]])),
        "fp8_min_batch": FP8_MIN_BATCH,
        "norm_batch": args.norm_batch,
    }
    record["groupnorm"] = norm_rows(args.norm_batch)
    record["unet"] = []
    path = write_result(args.out, "fp8-speed", record)
    for row in unet_rows([int(b) for b in args.batches.split(",")]):  # the file grows row by row: compiles are slow
        record["unet"].append(row)
        write_result(args.out, "fp8-speed", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
