"""The FP8 3x3 convolution's kernels at every ResBlock convolution of the CIFAR-10 U-Net, on a GPU.

Per shape, one call's share of a CUDA graph of ten (no launch overhead) of: the pointer kernel, the
Triton TMA kernel, and what the op runs (`op`: on an H100 the warp-specialized Gluon kernel of
`conv3x3_hopper`); for first convolutions also
the TMA kernel and the op computing GroupNorm statistics in their epilogues. Each convolution gets
what the U-Net passes it: the first the time embedding, the second the block's input, as a residual
or as the input of the 1x1 skip projection (in two parts in the decoder). Rows carry how many times
the U-Net calls each shape, and the totals weight by them. Needs an sm_90 GPU.

    python benchmarks/conv3x3_speed.py --batch 256
"""

from __future__ import annotations

import argparse
import collections
import shlex
import sys
from pathlib import Path

import torch

from ddpm_triton.config import preset
from ddpm_triton.kernels.conv3x3 import _launch, conv3x3_fp8, conv3x3_fp8_stats, pack_weight
from ddpm_triton.provenance import stamp, write_result
from ddpm_triton.unet import ResBlock, UNet
from fp8_speed import graphed_call_ms


Shape = tuple[str, int, int, int, tuple[int, ...]]


def unet_shapes(name: str) -> collections.Counter[Shape]:
    """(conv1 or conv2, image size, C_in, C_out, the skip projection's input parts) of every ResBlock
    convolution, counted; the parts are () for conv1 and where the skip connection is the identity."""
    u = preset(name).unet
    model = UNet(u)
    shapes: collections.Counter[Shape] = collections.Counter()

    def record(block: ResBlock, args: tuple, out: torch.Tensor) -> None:  # type: ignore[type-arg]
        x, _, *tail = args
        parts = tuple(part.shape[1] for part in (x, *tail) if part is not None) if isinstance(block.skip, torch.nn.Conv2d) else ()
        size = x.shape[-1]
        shapes.update([("conv1", size, block.conv1.in_channels, block.conv1.out_channels, ()),
                       ("conv2", size, block.conv2.in_channels, block.conv2.out_channels, parts)])  # fmt: skip

    for block in model.modules():
        if isinstance(block, ResBlock):
            block.register_forward_hook(record)
    with torch.no_grad():
        model(torch.randn(1, u.in_channels, u.image_size, u.image_size), torch.ones(1), torch.zeros(1, dtype=torch.long) if u.conditional else None)
    return shapes


def half(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device="cuda").half().contiguous(memory_format=torch.channels_last)


def pointer_kernel(x, weight, scale, bias, row, residual, skip_inputs, skip_weight):  # type: ignore[no-untyped-def]
    """conv3x3_fp8 through the pointer kernel, which the op runs only where TMA does not apply."""
    return _launch(x, weight, scale, bias, row, residual, skip_inputs, skip_weight, tma=False)[0]


def tma_kernel(x, weight, scale, bias, row, residual, skip_inputs, skip_weight, with_statistics=False):  # type: ignore[no-untyped-def]
    """conv3x3_fp8 through the Triton TMA kernel, also where the op runs the warp-specialized one."""
    return _launch(x, weight, scale, bias, row, residual, skip_inputs, skip_weight, with_statistics, warp_specialized=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cifar10")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        sys.exit("conv3x3_speed.py compares the TMA kernel with the pointer kernel: it needs an sm_90 GPU")
    record = {**stamp("cuda", shlex.join(["python", "benchmarks/conv3x3_speed.py", *sys.argv[1:]])), "batch": args.batch, "rows": []}
    totals = collections.Counter()
    for (kind, size, c_in, c_out, parts), calls in sorted(unet_shapes(args.preset).items(), key=lambda kv: (-kv[0][1], kv[0])):
        x = torch.randn(args.batch, c_in, size, size, device="cuda").contiguous(memory_format=torch.channels_last).to(torch.float8_e4m3fn)
        weight, scale = pack_weight(torch.randn(c_out, c_in, 3, 3, device="cuda") / (9 * c_in) ** 0.5)
        bias = torch.randn(c_out, device="cuda")
        row = torch.randn(args.batch, c_out, device="cuda").half() if kind == "conv1" else None
        residual = half(args.batch, c_out, size, size) if kind == "conv2" and not parts else None
        skip_inputs = [half(args.batch, c, size, size) for c in parts]
        skip_weight = torch.randn(c_out, sum(parts), device="cuda").half() / sum(parts) ** 0.5 if parts else None
        operands = (x, weight, scale, bias, row, residual, skip_inputs, skip_weight)
        expected = pointer_kernel(*operands).float()

        def error(out: torch.Tensor) -> float:
            return ((out.float() - expected).norm() / expected.norm()).item()

        row_record = {"kind": kind, "size": size, "c_in": c_in, "c_out": c_out, "skip_parts": list(parts), "calls": calls,
                      "tma_vs_pointer_rel_err": error(tma_kernel(*operands)[0]), "op_vs_pointer_rel_err": error(conv3x3_fp8(*operands)),
                      "pointer_ms": graphed_call_ms(lambda: pointer_kernel(*operands)),
                      "tma_ms": graphed_call_ms(lambda: tma_kernel(*operands)),
                      "op_ms": graphed_call_ms(lambda: conv3x3_fp8(*operands))}  # fmt: skip
        if kind == "conv1":
            row_record["tma_stats_ms"] = graphed_call_ms(lambda: tma_kernel(*operands, with_statistics=True))
            row_record["op_stats_ms"] = graphed_call_ms(lambda: conv3x3_fp8_stats(x, weight, scale, bias, row))
        row_record["op_tflops"] = 2 * args.batch * size * size * (9 * c_in + sum(parts)) * c_out / row_record["op_ms"] / 1e9
        for variant in ("pointer", "tma", "tma_stats", "op", "op_stats"):
            plain = "op_ms" if variant.startswith("op") else "tma_ms"  # a second convolution has no statistics variant
            totals[f"{variant}_ms"] += calls * row_record.get(f"{variant}_ms", row_record[plain])
        record["rows"].append(row_record)
        skip = f" + 1x1 of {'+'.join(map(str, parts))}" if parts else ""
        print(f"{kind} {size}x{size} {c_in}->{c_out}{skip} x{calls}: pointer {row_record['pointer_ms'] * 1e3:.1f} us, "
              f"TMA {row_record['tma_ms'] * 1e3:.1f} us, op {row_record['op_ms'] * 1e3:.1f} us ({row_record['op_tflops']:.0f} TFLOP/s)",
              flush=True)  # fmt: skip
    record["per_unet_call"] = dict(totals)
    print(f"per U-Net call: {dict(totals)}\nwrote {write_result(args.out, 'conv3x3-speed', record)}")


if __name__ == "__main__":
    main()
