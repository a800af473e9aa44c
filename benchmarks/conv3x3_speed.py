"""The FP8 3x3 convolution's two kernels at every ResBlock convolution of the CIFAR-10 U-Net, on a GPU.

Per shape, one CUDA-graph replay (no launch overhead) of: the pointer kernel, the TMA kernel the
package runs on Hopper, and the TMA kernel computing GroupNorm statistics in its epilogue (the first
convolution of a block). Each convolution gets what the U-Net passes it: the first the time
embedding, the second the block's input, as a residual or as the input of the 1x1 skip projection
(in two parts in the decoder). Rows carry how many times the U-Net calls each shape, and the totals
weight by them. Needs an sm_90 GPU.

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
from fp8_speed import graphed_ms


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
    return _launch(x, weight, scale, bias, row, residual, skip_inputs, skip_weight, None, tma=False)


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
        out = conv3x3_fp8(*operands).float()
        row_record = {"kind": kind, "size": size, "c_in": c_in, "c_out": c_out, "skip_parts": list(parts), "calls": calls,
                      "tma_vs_pointer_rel_err": ((out - expected).norm() / expected.norm()).item(),
                      "pointer_ms": graphed_ms(lambda: pointer_kernel(*operands), 50),
                      "tma_ms": graphed_ms(lambda: conv3x3_fp8(*operands), 50)}  # fmt: skip
        if kind == "conv1":
            row_record["tma_stats_ms"] = graphed_ms(lambda: conv3x3_fp8_stats(x, weight, scale, bias, row), 50)
        row_record["tma_tflops"] = 2 * args.batch * size * size * (9 * c_in + sum(parts)) * c_out / row_record["tma_ms"] / 1e9
        for variant in ("pointer", "tma", "tma_stats"):
            totals[f"{variant}_ms"] += calls * row_record.get(f"{variant}_ms", row_record["tma_ms"])
        record["rows"].append(row_record)
        skip = f" + 1x1 of {'+'.join(map(str, parts))}" if parts else ""
        print(f"{kind} {size}x{size} {c_in}->{c_out}{skip} x{calls}: pointer {row_record['pointer_ms'] * 1e3:.1f} us, "
              f"TMA {row_record['tma_ms'] * 1e3:.1f} us ({row_record['tma_tflops']:.0f} TFLOP/s)", flush=True)  # fmt: skip
    record["per_unet_call"] = dict(totals)
    print(f"per U-Net call: {dict(totals)}\nwrote {write_result(args.out, 'conv3x3-speed', record)}")


if __name__ == "__main__":
    main()
