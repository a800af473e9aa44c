"""`ddpm-triton`: one command line for the whole life of a model: train, sample, export, serve."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

DEFAULT_CHECKPOINT = Path("models/mnist/ema.safetensors")
DEFAULT_REPOSITORY = Path("model_repository")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in _csv(text)]


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- train ---------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    from .config import preset
    from .data import load_dataset
    from .train import TrainConfig, Trainer

    overrides = {"num_classes": 0} if args.unconditional else {}
    model_config = preset(args.preset, **overrides)
    u = model_config.unet
    dataset = load_dataset(args.dataset, args.data_dir, image_size=u.image_size, channels=u.in_channels)
    if dataset.images.shape[1:] != (u.image_size, u.image_size, u.in_channels):
        raise SystemExit(
            f"the dataset's images are {dataset.images.shape[1:]}, the preset {args.preset!r} expects "
            f"{(u.image_size, u.image_size, u.in_channels)} (H, W, C)"
        )
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        grad_clip=args.grad_clip,
        grad_accumulation=args.grad_accumulation,
        precision=args.precision,
        label_dropout=args.label_dropout,
        compile=args.compile,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        max_minutes=args.max_minutes,
    )
    trainer = Trainer(model_config, train_config, dataset, args.out, _device(args.device))
    trainer.fit()
    print(f"EMA weights: {args.out / 'ema.safetensors'}")


# ---- sample --------------------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> None:
    import numpy as np
    from ddpm_client.images import save_grid

    from .checkpoint import load_model
    from .pipeline import Pipeline

    device = _device(args.device)
    model, config = load_model(args.checkpoint, device)
    classes = config.unet.num_classes
    if args.per_class and not classes:
        raise SystemExit("--per-class needs a class-conditional model")
    labels = np.repeat(np.arange(classes), args.per_class) if args.per_class else np.full(args.n, args.class_label)
    seeds = args.seed + np.arange(len(labels))
    images = Pipeline(model, config, device).sample(
        seeds, args.steps, args.sampler, args.eta, labels if classes else None, args.guidance_scale
    )
    print(save_grid(images, args.out, labels=labels.tolist() if args.per_class else None))


# ---- export --------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> None:
    from ddpm_triton.export.configs import ServingOptions
    from ddpm_triton.export.repository import ArtifactReport, export_repository

    from .artifacts import Variant

    variants = []
    for fmt in args.formats:
        for precision in args.precisions:
            try:
                variants.append(Variant(fmt, precision))
            except ValueError as err:
                print(f"skip: {err}")
    options = ServingOptions(
        max_batch_size=args.max_batch_size,
        default_steps=args.default_steps,
        default_sampler=args.default_sampler,
        default_guidance_scale=args.default_guidance_scale,
        unet=args.unet,
        max_step_batch=args.max_step_batch,
        max_queued_images=args.max_queued_images,
        execution=args.execution,
        compile=args.compile,
    )

    def show(report: ArtifactReport) -> None:
        name = report.variant.model_name
        if report.skipped:
            print(f"{name:24s} skipped: {report.skipped}")
        else:
            p = report.parity
            print(f"{name:24s} {report.path}  vs PyTorch: rel {p.relative_error:.2e}, max abs {p.max_abs_error:.2e}")

    export_repository(args.checkpoint, args.repository, variants, options, args.data_dir, on_artifact=show)
    print(f"model repository: {args.repository}")


# ---- server --------------------------------------------------------------------------------------


def cmd_install_server(args: argparse.Namespace) -> None:
    from .tritonserver import ServerFiles, install

    files = install(ServerFiles(args.home), args.wheel_dir)
    print(f"tritonserver: {files.tritonserver}\nperf_analyzer: {files.perf_analyzer}")


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    from .tritonserver import ServerFiles, TritonServer, install

    # The watchdog's restarts go to stderr, beside Triton's own log.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = TritonServer(
        repository=args.repository,
        files=install(ServerFiles(args.home)),
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_config_name=None if args.device == "cpu" else args.device,
        watchdog_interval_s=args.watchdog_interval,
    )
    server.start()
    try:
        server.wait_ready()
        watchdog = (
            f"watchdog: checks every {args.watchdog_interval:g} s for a model whose stub process died and reloads "
            "it, or restarts tritonserver where the model's config says on_stub_death: restart_server"
            if server.watchdog
            else "watchdog: off"
        )
        front = f" (front; tritonserver's own: 127.0.0.1:{server.triton_http_port})" if server.front else ""
        print(
            f"ready: HTTP {server.http_url}{front}  gRPC {server.grpc_url}  metrics {server.metrics_url}\n"
            f"admin APIs need header {'admin-key'}: {server.admin_key}   (Ctrl-C stops)\n{watchdog}",
            flush=True,
        )
        server.wait()  # across the watchdog's restarts of tritonserver
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
    sys.exit(0 if code in (0, None, -2) else code)


def cmd_demo(args: argparse.Namespace) -> None:
    """Start the server, draw every class through the client library, write one labelled PNG, stop."""
    import asyncio

    from ddpm_client import AsyncDDPMClient
    from ddpm_client.images import save_grid

    from .tritonserver import ServerFiles, TritonServer, install

    server = TritonServer(
        repository=args.repository,
        files=install(ServerFiles(args.home)),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_path=args.log,
    )

    async def draw() -> tuple[list[int], object]:
        # The async client sends its batches at once, so the server merges their U-Net steps.
        async with AsyncDDPMClient(server.grpc_url) as client:
            info = await client.model_info()
            classes = list(range(info.num_classes)) if info.num_classes else [-1]
            labels = [c for c in classes for _ in range(args.per_class)]
            print(f"server ready; {len(labels)} images, {args.steps} DDIM steps each ...", flush=True)
            images = await client.generate(
                len(labels), seed=args.seed, steps=args.steps, class_label=labels if info.num_classes else None
            )
            return labels, images

    print(f"starting tritonserver on {args.repository} (log: {args.log}) ...", flush=True)
    with server:
        labels, images = asyncio.run(draw())
    print(f"wrote {save_grid(images, args.out, labels=labels)}")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import Plan, run_bench

    gpu = args.device == "gpu"
    plan = Plan(
        preset=args.preset, gpu=gpu, batches=args.batches, concurrency=args.concurrency, short_steps=args.steps,
        long_steps=args.long_steps, long_batch=args.long_batch, repeats=args.repeats, peers=args.peers,
        peer_batch=args.peer_batch, precision=args.precision, compile=args.compile, stability_percent=args.stability,
        parts=tuple(args.parts),
    )  # fmt: skip
    path = run_bench(plan, args.out, args.home, args.command_line, merge=args.merge)
    print(f"wrote {path} and its .md and .png")
    print(path.with_suffix(".md").read_text())


# ---- quality -------------------------------------------------------------------------------------


def _limits(items: list[str]) -> dict[str, int]:
    limits = {}
    for item in items:
        name, _, count = item.partition("=")
        if not count.isdigit():
            raise SystemExit(f"--limit takes VARIANT=IMAGES, e.g. torchscript_fp16=10, got {item!r}")
        limits[name.strip()] = int(count)
    return limits


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Sample quality in-process: accuracy and classifier Frechet distance per artifact and per setting."""
    from .evaluate import evaluate

    report = evaluate(
        args.checkpoint,
        args.data_dir,
        args.classifier,
        variants=args.variants,
        images=args.images,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        grid_images=args.grid_images,
        grid_guidance=[float(g) for g in args.grid_guidance],
        grid_steps=[int(s) for s in args.grid_steps],
        full_grid=args.full_grid,
        grid_variant=args.grid_variant,
        limits=_limits(args.limit),
        seed=args.seed,
        batch_size=args.batch_size,
        device=_device(args.device),
        threads=args.threads,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json())
    print(report.to_markdown())


def cmd_figures(args: argparse.Namespace) -> None:
    """samples.png, forward.png and reverse.png for the docs."""
    from .figures import write_figures

    paths = write_figures(
        args.out,
        args.checkpoint,
        args.data_dir,
        per_class=args.per_class,
        steps=args.steps,
        reverse_steps=args.reverse_steps,
        reverse_label=args.reverse_label,
        columns=args.columns,
        guidance_scale=args.guidance_scale,
        digit_index=args.digit_index,
        seed=args.seed,
        device=_device(args.device),
    )
    for path in paths:
        print(f"wrote {path}")


# ---- parser --------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from ddpm_client.contract import SAMPLERS

    from .artifacts import FORMATS, PRECISIONS
    from .config import PRESETS
    from .data import DATASETS

    root = argparse.ArgumentParser(prog="ddpm-triton", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a DDPM U-Net; resumes from --out if it holds a checkpoint")
    p.add_argument("--preset", choices=sorted(PRESETS), default="mnist")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", type=Path, required=True, help="folder with the dataset's files")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory (ema.safetensors, ...)")
    p.add_argument("--unconditional", action="store_true", help="ignore labels (no classifier-free guidance)")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--grad-accumulation", type=int, default=1)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--sample-every", type=int, default=1000, help="write a sample grid every N steps (0: never)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop and save after this long (0: no limit)")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("sample", help="sample images in-process (no server) into a PNG grid")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--per-class", type=int, default=0, help="K images of every class, one row per class")
    p.add_argument("--class-label", type=int, default=-1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    p.add_argument("--device", default="auto")
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("export", help="write U-Net artifacts and Triton configs into a model repository")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--formats", type=_csv, default=["onnx", "torchscript"], help=f"of {','.join(FORMATS)}")
    p.add_argument("--precisions", type=_csv, default=["fp32", "int8"], help=f"of {','.join(PRECISIONS)}")
    p.add_argument("--unet", default=None, help="U-Net ddpm runs, e.g. unet_onnx_fp32 (default: per target)")
    p.add_argument("--execution", choices=("in_process", "bls"), default=None,
                   help="run the U-Net inside ddpm or call its Triton model per step (default: bls in the container only)")
    p.add_argument("--max-batch-size", type=int, default=16, help="images per request")
    p.add_argument("--max-step-batch", type=int, default=64, help="images per U-Net call, across requests")
    p.add_argument("--max-queued-images", type=int, default=256, help="images in progress before requests are refused")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="no torch.compile on the GPU fast path")
    p.add_argument("--default-steps", type=int, default=50)
    p.add_argument("--default-sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--default-guidance-scale", type=float, default=2.0)
    p.add_argument("--data-dir", type=Path, default=None, help="images for int8 calibration (MNIST idx files)")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("install-server", help="unpack tritonserver and perf_analyzer from PyPI wheels")
    p.add_argument("--home", type=Path, default=Path(".cache/tritonserver"))
    p.add_argument("--wheel-dir", type=Path, default=None, help="use wheels from here instead of downloading")
    p.set_defaults(run=cmd_install_server)

    p = sub.add_parser("serve", help="run tritonserver on a model repository in the foreground")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="address to bind (default loopback)")
    p.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", "8000")))
    p.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", "8001")))
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", "8002")))
    p.add_argument("--watchdog-interval", type=float, default=float(os.environ.get("WATCHDOG_INTERVAL", "1")),
                   help="seconds between checks for a model whose Python stub process died, which is then "
                   "reloaded, or tritonserver restarted where its config says on_stub_death: restart_server "
                   "(0: no watchdog; default 1)")  # fmt: skip
    p.add_argument("--home", type=Path, default=Path(".cache/tritonserver"))
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("demo", help="serve the repository, generate a labelled grid through the client, stop")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--out", type=Path, default=Path("demo.png"))
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", "8000")))
    p.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", "8001")))
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", "8002")))
    p.add_argument("--log", type=Path, default=Path(".cache/demo-server.log"))
    p.add_argument("--home", type=Path, default=Path(".cache/tritonserver"))
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("bench", help="throughput and latency through Triton (perf_analyzer), in-process and diffusers")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cifar10", help="U-Net shape (random weights)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the batch and concurrency sweeps")
    p.add_argument("--batches", type=_ints, default=[1, 16, 64, 256], help="batch sweep at concurrency 1")
    p.add_argument("--concurrency", type=_ints, default=[1, 8, 32, 64], help="single-image clients")
    p.add_argument("--long-steps", type=int, default=1000, help="DDPM steps of the throughput rows")
    p.add_argument("--long-batch", type=int, default=256, help="images per request of the throughput rows")
    p.add_argument("--peers", type=_csv, default=["diffusers-fp32-eager", "diffusers-fp16-compiled"],
                   help="diffusers configurations measured in the same run (empty: none)")
    p.add_argument("--peer-batch", type=int, default=64, help="batch of the slow fp32 eager peer's long rows")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32", "fp8"), default="fp16",
                   help="GPU compute precision (fp8: the residual blocks' convolutions in FP8, Hopper/Ada)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="CUDA graphs without torch.compile")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stability", type=float, default=50.0, help="perf_analyzer --stability-percentage")
    p.add_argument("--parts", type=_csv, default=["in_process", "peers", "triton"], help="what to measure")
    p.add_argument("--merge", action="store_true", help="add to today's result file for this device (a run in parts)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--home", type=Path, default=Path(".cache/tritonserver"))
    p.set_defaults(run=cmd_bench)

    from .artifacts import SUPPORTED

    variants = ["pytorch_fp32"] + [f"{fmt}_{p}" for fmt, precisions in SUPPORTED.items() for p in precisions]
    p = sub.add_parser("evaluate", help="sample quality in-process: classifier accuracy and distance per artifact")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--classifier", type=Path, default=Path("models/mnist-classifier/classifier.safetensors"))
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"), help="MNIST test idx files")
    p.add_argument("--variants", type=_csv, default=variants,
                   help=f"of {','.join(variants)}; also pytorch_fp16 and pytorch_fp8 (the weights in PyTorch, on a GPU)")
    p.add_argument("--images", type=int, default=200, help="images per variant (0: no precision table)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--grid-images", type=int, default=100, help="images per grid cell (0: no grid)")
    p.add_argument("--grid-guidance", type=_csv, default=["0", "1", "2", "4"])
    p.add_argument("--grid-steps", type=_csv, default=["10", "20", "50"])
    p.add_argument("--full-grid", action="store_true", help="every guidance x steps cell (default: a cross)")
    p.add_argument("--grid-variant", default="onnx_fp32", help="what samples the grid")
    p.add_argument("--limit", action="append", default=[], metavar="VARIANT=N", help="cap one variant's images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50, help="images per denoising loop")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("figures", help="write samples.png, forward.png and reverse.png (docs pictures)")
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"), help="MNIST test idx files")
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the samples grid")
    p.add_argument("--reverse-steps", type=int, default=50, help="DDIM steps of the traced sample")
    p.add_argument("--reverse-label", type=int, default=3)
    p.add_argument("--columns", type=int, default=8, help="steps shown in reverse.png")
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--digit-index", type=int, default=0, help="which MNIST test digit forward.png noises")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=cmd_figures)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.command_line = "ddpm-triton " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
