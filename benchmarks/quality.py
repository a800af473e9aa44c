#!/usr/bin/env python
"""Sample quality of the shipped model and of every exported artifact, judged by the shipped classifier.

    python benchmarks/quality.py                       # the CPU run kept in benchmarks/results/ (~20 min on 2 cores)
    python benchmarks/quality.py --images 40 --grid-images 0 --steps 10    # a quick look

In-process, no server: `ddpm_triton.evaluate` exports each artifact into a temporary folder and
samples with it through the same denoising loop the Triton `ddpm` model runs. Writes
quality-<date>-<cpu|cuda>.json and .md (device, date, git commit, command, sizes, both tables).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

import torch

from ddpm_triton.evaluate import VARIANTS, evaluate
from ddpm_triton.provenance import describe_device, git_commit

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "mnist" / "ema.safetensors")
    parser.add_argument(
        "--classifier", type=Path, default=ROOT / "models" / "mnist-classifier" / "classifier.safetensors"
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--images", type=int, default=200, help="images per artifact in the precision table")
    parser.add_argument(
        "--steps", type=int, default=20, help="DDIM steps of the precision table (and the guidance sweep)"
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=2.0, help="of the precision table (and the steps sweep)"
    )
    parser.add_argument("--grid-images", type=int, default=100, help="images per guidance/steps cell")
    parser.add_argument("--grid-guidance", default="0,1,2,4")
    parser.add_argument("--grid-steps", default="10,20,50")
    parser.add_argument("--full-grid", action="store_true", help="every guidance x steps cell instead of the cross")
    parser.add_argument("--grid-variant", default="onnx_fp32")
    parser.add_argument("--limit", action="append", default=[], metavar="VARIANT=N",
                        help="cap one variant's images (on a CPU, torchscript_fp16 defaults to 10)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    limits = {}
    for item in args.limit:
        name, _, count = item.partition("=")
        if not count.isdigit():
            parser.error(f"--limit takes VARIANT=N, got {item!r}")
        limits[name] = int(count)
    started = dt.datetime.now(dt.timezone.utc)
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "device": describe_device(args.device),
        "commit": git_commit(),
        "command": " ".join(
            ["python benchmarks/quality.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
        ),
        "versions": f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}",
    }
    report = evaluate(
        args.checkpoint,
        args.data_dir,
        args.classifier,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        images=args.images,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        grid_images=args.grid_images,
        grid_guidance=[float(g) for g in args.grid_guidance.split(",")],
        grid_steps=[int(s) for s in args.grid_steps.split(",")],
        full_grid=args.full_grid,
        grid_variant=args.grid_variant,
        limits=limits,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
    )
    minutes = (dt.datetime.now(dt.timezone.utc) - started).total_seconds() / 60
    report.meta = {**meta, "wall time": f"{minutes:.1f} min"}
    report.settings = {
        **report.settings,
        "checkpoint": _relative(args.checkpoint),
        "classifier": _relative(args.classifier),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"quality-{started:%Y-%m-%d}-{'cuda' if args.device.startswith('cuda') else 'cpu'}"
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    json_path.write_text(report.to_json())
    md_path.write_text(report.to_markdown())
    print(report.to_markdown())
    print(f"wrote {json_path} and {md_path}")
    return 0


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
