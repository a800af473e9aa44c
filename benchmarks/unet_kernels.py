"""Where one U-Net call spends its GPU time: kernels binned into convolution, matmul, attention, Inductor.

The U-Net runs as the server runs it on a GPU (random weights, fp16, channels_last,
torch.compile with static shapes), outside a CUDA graph so that each kernel is seen. Needs a
CUDA device; the work is ddpm_triton.kernel_profile.

    python benchmarks/unet_kernels.py --preset cifar10 --batch 256
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from ddpm_triton.bench import random_checkpoint
from ddpm_triton.config import preset
from ddpm_triton.kernel_profile import profile_unet, summarize
from ddpm_triton.provenance import stamp, write_result
from ddpm_triton.runners import load_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cifar10")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager U-Net")
    parser.add_argument("--calls", type=int, default=5, help="U-Net calls profiled")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("unet_kernels.py profiles CUDA kernels: it needs a GPU")
    checkpoint = random_checkpoint(args.preset, Path(tempfile.mkdtemp()) / "model.safetensors")
    unet = load_runner(checkpoint, "cuda", precision=args.precision, compile=args.compile)
    u = preset(args.preset).unet
    rows, categories = summarize(profile_unet(unet, args.batch, (u.in_channels, u.image_size, u.image_size), args.calls), args.calls)
    total = sum(categories.values())
    print(f"{args.preset} U-Net, batch {args.batch}: {total:.2f} ms of kernels per call, {total * 1000 / args.batch:.1f} us per image")
    for category, ms in categories.items():
        print(f"  {100 * ms / total:5.1f}%  {ms:6.2f} ms  {category}")
    for row in rows[:15]:
        print(f"  {100 * row.ms / total:5.1f}%  x{row.calls:4.0f}  {row.category:11s}  {row.name[:100]}")
    record = {
        **stamp("cuda", shlex.join(["python", "benchmarks/unet_kernels.py", *sys.argv[1:]])),
        "preset": args.preset, "batch": args.batch, "precision": args.precision, "compile": args.compile,
        "ms_per_call": total, "categories_ms": categories, "kernels": [asdict(r) for r in rows],
    }  # fmt: skip
    print(f"wrote {write_result(args.out, 'unet-kernels', record)}")


if __name__ == "__main__":
    main()
