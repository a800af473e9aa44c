"""`ddpm-triton bench`: sampling throughput and latency through the real Triton server, and in-process.

Every row is measured in the same run on the same device: the server driven by perf_analyzer
(images/s = perf_analyzer's inferences/s, since the batch dimension counts images) and the
in-process PyTorch loop on the same U-Net, so the cost of serving is visible next to the model.
The result file follows one schema (see `write_results`) whatever the device.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import Variant
from .checkpoint import load_model, save_weights
from .config import preset
from .perf import run_perf_analyzer, write_input_data
from .pipeline import Pipeline
from .provenance import describe_device, git_commit
from .tritonserver import ServerFiles, TritonServer, free_port
from .unet import UNet


@dataclass(frozen=True)
class Row:
    system: str
    via_triton: bool
    precision: str
    format: str
    batch: int
    concurrency: int
    steps: int
    sampler: str
    images_per_s: float
    p50_ms: float
    p99_ms: float
    peak_gpu_mb: float | None
    command: str


def random_checkpoint(preset_name: str, path: Path) -> Path:
    """Random weights suffice for timing; the zero-initialised output layers are re-drawn so eps is not 0."""
    config = preset(preset_name)
    torch.manual_seed(0)
    model = UNet(config.unet)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_weights(path, model.state_dict(), config)
    return path


def gpu_memory_used_mb() -> float | None:
    """Memory in use on GPU 0 by every process (the server's stubs included), from nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return float(out.stdout.strip())


def in_process_rows(
    checkpoint: Path, device: str, precision: str, batches: list[int], steps: int, repeats: int, command: str
) -> list[Row]:
    """The same denoising loop with the PyTorch U-Net called directly (no server): the floor serving adds to."""
    model, config = load_model(checkpoint, device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    model = model.to(dtype=dtype, memory_format=torch.channels_last)
    pipeline = Pipeline(model, config, device)
    labels = None
    rows = []
    for batch in batches:
        if config.unet.conditional:
            labels = np.arange(batch) % config.unet.num_classes
        seeds = np.arange(batch)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            pipeline.sample(seeds, steps=2, labels=labels)  # warm-up: kernels, allocator
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                pipeline.sample(seeds, steps=steps, labels=labels)
                times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        p50 = float(np.median(times)) * 1000
        rows.append(
            Row("project", False, precision, "pytorch", batch, 1, steps, "ddim", batch / (p50 / 1000), p50,
                float(np.max(times)) * 1000, peak, command)  # fmt: skip
        )
    return rows


def triton_rows(
    server: TritonServer, work: Path, variant: Variant, batches: list[int], concurrency: list[int], steps: int,
    stability_percent: float, command: str,
) -> list[Row]:  # fmt: skip
    """perf_analyzer over gRPC: a batch sweep at concurrency 1, then a concurrency sweep of single images."""
    data = write_input_data(work / f"input-{steps}.json", seeds=64, STEPS=steps)
    rows = []
    for batch, levels in [*((b, [1]) for b in batches), (1, concurrency)]:
        for level in levels:
            measured = run_perf_analyzer(
                server, data, concurrency=[level], batch_size=batch, requests_per_window=max(8, 2 * level),
                max_trials=6, stability_percent=stability_percent,
            )  # fmt: skip
            for m in measured:
                rows.append(
                    Row("project", True, variant.precision, variant.format, batch, m.concurrency, steps, "ddim",
                        m.inferences_per_s, m.p50_ms, m.p99_ms, gpu_memory_used_mb(), command)  # fmt: skip
                )
    return rows


def write_results(rows: list[Row], out_dir: Path, model: str, command: str) -> Path:
    """benchmarks/results/<date>-<device>.json and .md."""
    now = datetime.now(timezone.utc)
    device = describe_device("cuda" if torch.cuda.is_available() else "cpu")
    stem = f"{now:%Y-%m-%d}-{device.split(',')[0].removeprefix('GPU: ').removeprefix('CPU: ').replace(' ', '-').lower()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "device": device, "date": now.isoformat(timespec="seconds"), "commit": git_commit(), "model": model,
        "command": command, "rows": [asdict(r) for r in rows],
    }  # fmt: skip
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
    lines = [
        f"# {model} on {device}", "", f"{record['date']}, commit {record['commit']}", "", f"`{command}`", "",
        "| system | via Triton | format | precision | batch | concurrency | steps | images/s | p50 ms | p99 ms | GPU MB |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for r in rows:
        memory = "" if r.peak_gpu_mb is None else f"{r.peak_gpu_mb:.0f}"
        lines.append(
            f"| {r.system} | {'yes' if r.via_triton else 'no'} | {r.format} | {r.precision} | {r.batch} | "
            f"{r.concurrency} | {r.steps} | {r.images_per_s:.2f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {memory} |"
        )
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return out_dir / f"{stem}.json"


def run_bench(
    preset_name: str, gpu: bool, variant: Variant, batches: list[int], concurrency: list[int], steps: int,
    repeats: int, out_dir: Path, home: Path, command: str, stability_percent: float = 50.0,
) -> Path:  # fmt: skip
    from ddpm_triton.export.configs import ServingOptions
    from ddpm_triton.export.repository import export_repository

    device = "cuda" if gpu else "cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = random_checkpoint(preset_name, work / "model.safetensors")
        repository = work / "repository"
        options = ServingOptions(max_batch_size=max(batches), unet=variant.model_name, default_guidance_scale=1.0)
        export_repository(checkpoint, repository, [variant], options)
        rows = in_process_rows(checkpoint, device, "fp16" if gpu else "fp32", batches, steps, repeats, command)
        server = TritonServer(
            repository, ServerFiles(home), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
            model_config_name="gpu" if gpu else None, log_path=out_dir / "bench-server.log",
        )  # fmt: skip
        with server:
            rows += triton_rows(server, work, variant, batches, concurrency, steps, stability_percent, command)
    return write_results(rows, out_dir, f"{preset_name} U-Net (random weights)", command)
