"""`ddpm-client`: images from a ddpm-triton server to PNG files, and a health check.

Exit codes: 0 done, 1 the server failed or is not ready (its message on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from .client import DDPMClient
from .contract import MODEL_NAME, SAMPLERS
from .errors import GenerationError
from .images import save_each, save_grid
from .requests import expand_seeds
from .transport import PROTOCOLS

DEFAULT_N = 16


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: runs one command and returns its exit status."""
    args = _parser().parse_args(argv)
    try:
        return generate(args) if args.command == "generate" else health(args)
    except GenerationError as error:
        print(f"ddpm-client: error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"ddpm-client: bad argument: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"ddpm-client: cannot write: {error}", file=sys.stderr)
        return 1


def generate(args: argparse.Namespace) -> int:
    """Generate, write the grid (and the images one by one if asked), print where they went."""
    with _client(args) as client:
        n, labels = _images_asked(args, client)
        images = client.generate(
            n,
            seed=args.seed,
            steps=args.steps,
            sampler=args.sampler,
            eta=args.eta,
            class_label=labels,
            guidance_scale=args.guidance_scale,
        )
    assert isinstance(images, np.ndarray)  # output="numpy", the default
    grid = save_grid(images, args.out, labels=labels if args.per_class is not None else None)
    print(f"wrote {grid} ({n} images)")
    if args.individual_dir is not None:
        save_each(images, args.individual_dir, seeds=expand_seeds(n, args.seed).tolist(), labels=labels)
        print(f"wrote {n} images to {args.individual_dir}")
    return 0


def health(args: argparse.Namespace) -> int:
    """Print whether the server is ready and what the model config says; 1 if not ready."""
    with _client(args) as client:
        where = f"{client.endpoint.url} ({client.endpoint.protocol})"
        if not client.server_ready():
            print(f"server {where}: not ready", file=sys.stderr)
            return 1
        info = client.model_info()
    facts = " ".join(f"{key}={value}" for key, value in sorted(info.parameters.items()))
    print(f"server {where}: ready")
    print(f"model {info.name or args.model}: max_batch_size={info.max_batch_size} {facts}".rstrip())
    return 0


def _client(args: argparse.Namespace) -> DDPMClient:
    return DDPMClient(args.url, args.protocol, args.model, timeout_s=args.timeout, retries=args.retries)


def _images_asked(args: argparse.Namespace, client: DDPMClient) -> tuple[int, list[int] | None]:
    """How many images, and their class labels (None: CLASS_LABEL is not sent)."""
    if args.per_class is None:
        n = DEFAULT_N if args.n is None else args.n
        return n, None if args.class_label is None else [args.class_label] * n
    if args.n is not None:
        raise ValueError("-n and --per-class both set the number of images: give one")
    num_classes = client.model_info().num_classes
    if not num_classes:
        raise ValueError(
            f"--per-class needs a class-conditional model; {client.endpoint.model} gives no num_classes > 0"
        )
    labels = [label for label in range(num_classes) for _ in range(args.per_class)]
    return len(labels), labels


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", help="host:port (default: localhost:8001 for grpc, localhost:8000 for http)")
    server.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    server.add_argument("--model", default=MODEL_NAME, help="model name (default: %(default)s)")
    server.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: %(default)s)")
    server.add_argument(
        "--retries", type=int, default=3, help="retries while the server is unreachable (default: %(default)s)"
    )

    parser = argparse.ArgumentParser(prog="ddpm-client", description="Images from a ddpm-triton server.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", parents=[server], help="generate images and write PNGs")
    gen.add_argument("-n", type=_positive, help=f"number of images (default: {DEFAULT_N})")
    gen.add_argument("--seed", type=int, default=0, help="seed of the first image; the next get seed+1, ...")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the server's)")
    gen.add_argument("--sampler", choices=SAMPLERS, help="sampler (default: the server's)")
    gen.add_argument("--eta", type=float, help="DDIM stochasticity, 0 = deterministic (ddim only)")
    labels = gen.add_mutually_exclusive_group()
    labels.add_argument("--class-label", type=int, help="class of every image; -1 = unconditional")
    labels.add_argument(
        "--per-class", type=_positive, metavar="K", help="K images of each class, one grid row per class"
    )
    gen.add_argument("--guidance-scale", type=float, help="classifier-free guidance weight (default: the server's)")
    gen.add_argument("--out", default="grid.png", help="grid PNG to write (default: %(default)s)")
    gen.add_argument("--individual-dir", metavar="DIR", help="also write each image as DIR/NNNN_seedS.png")
    commands.add_parser("health", parents=[server], help="is the server ready; what does the model say")
    return parser
