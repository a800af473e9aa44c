"""`ddpm-triton bench`: sampling throughput and latency through the real Triton server, beside its peers.

One run, one device, one result file: the server driven by perf_analyzer (a batch sweep at
concurrency 1, a concurrency sweep of single-image requests, and long DDPM runs), the project's
own denoising engine in-process (the same `Stepper`, without Triton: what serving costs), and the
Hugging Face diffusers pipelines (`peers.py`). images/s is perf_analyzer's inferences/s, since
the batch dimension counts images. On a CPU the same command is a seconds-long smoke run.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_weights, save_weights
from .config import preset
from .diffusion import Diffusion
from .gpu_load import GpuLoad, GpuLoadSampler
from .perf import PerfRow, run_perf_analyzer, write_input_data
from .provenance import device_slug, stamp
from .runners import load_runner
from .scheduler import ImageOptions, Job, StepScheduler
from .soak import read_counters, server_rss
from .stepper import Stepper
from .tritonserver import ServerFiles, TritonServer, free_port
from .unet import UNet

SAMPLER_ETA = {"ddim": 0.0, "ddpm": 1.0}
PARTS = ("in_process", "peers", "triton")
STEP_COUNTERS = ("ddpm_unet_calls", "ddpm_images_stepped")  # ddpm's Prometheus counters
# Requests per perf_analyzer window in the long runs. perf_analyzer's throughput is a window's
# requests over its length, and the length can count time beyond the requests' own latencies: with
# windows of 2 six-second requests on the H100 it reported 41.51 images/s where the p50 latency made
# 41.98 (256 / 6.098 s), 0.14 s per window. Longer windows dilute such an edge: with 3, four records
# differed by -0.01 to +0.32 s per window (0.27 s at 639ee65: 42.66 reported against 43.31 from its
# p50). With 5 the edge measured 0.16 s per window at b1ed62d (42.19 reported against 42.41), 0.03 s
# per request. The GPU bench runs in two device calls anyway (`--parts`, `--merge`), as it no longer
# fits in one's ten minutes.
LONG_RUN_WINDOW = 5


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
    mean_step_batch: float | None = None
    """Via Triton: images per U-Net call over the run (ddpm's counters), how well steps were batched."""
    sm_clock_mhz: float | None = None  # GPU 0 during the measurement (`gpu_load`): median SM clock,
    gpu_power_w: float | None = None  # median power draw,
    power_capped: float | None = None  # and the share of samples clocked down by the power cap

    def under(self, load: GpuLoad | None) -> Row:
        """This row with the GPU load sampled while it was measured (None on a CPU)."""
        if load is None:
            return self
        return replace(self, sm_clock_mhz=load.sm_clock_mhz, gpu_power_w=load.power_w, power_capped=load.power_capped)


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    preset: str
    gpu: bool
    batches: list[int]  # 50-step (short) batch sweep, at concurrency 1
    concurrency: list[int]  # single-image clients
    short_steps: int  # DDIM
    long_steps: int  # DDPM
    long_batch: int
    repeats: int
    peers: list[str]
    peer_batch: int  # the fp32 eager peer at long_steps is slow: it runs at this batch
    precision: str
    compile: bool
    stability_percent: float
    parts: tuple[str, ...] = PARTS


def random_checkpoint(preset_name: str, path: Path) -> Path:
    """Random weights suffice for timing; the zero-initialised output layers are re-drawn so eps is not 0."""
    config = preset(preset_name)
    torch.manual_seed(0)
    model = UNet(config.unet)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_weights(path, model.state_dict(), config)
    return path


def gpu_load(long_run: bool) -> GpuLoadSampler:
    """The GPU's clock and power, sampled during the long runs only: there the power cap sets the
    clock (on the H100 both the project's and diffusers' 1000-step runs ran capped). The short runs
    are latency-bound on the host and left without an nvidia-smi process beside them; whether one
    would disturb them was not measured (benchmarks/README.md). A diffusers peer's samples include
    its warm-up call, which `measure_peer` makes inside the measurement."""
    return GpuLoadSampler(active=long_run)


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


# ---- the project's engine, in-process ---------------------------------------------------------------


def engine(checkpoint: Path, gpu: bool, precision: str, compile: bool, capacity: int, max_batch: int) -> Stepper:
    """The server's denoising engine for `checkpoint`, in this process: on a GPU its fast path
    (`precision`, CUDA graphs, `compile`), on a CPU fp32 eager."""
    _, config = load_weights(checkpoint)
    device = torch.device("cuda" if gpu else "cpu")
    runner = load_runner(checkpoint, str(device), precision=precision if gpu else "fp32", compile=compile and gpu)
    u = config.unet
    return Stepper(
        runner, Diffusion(config.diffusion, device), (u.in_channels, u.image_size, u.image_size), capacity,
        config.diffusion.timesteps, u.num_classes if u.conditional else None, device, cuda_graphs=gpu,
        max_batch=max_batch,
    )  # fmt: skip


def in_process_rows(checkpoint: Path, plan: Plan, command: str) -> list[Row]:
    """The server's denoising engine (runner, Stepper, StepScheduler) driven directly: serving's floor."""
    capacity = max([*plan.batches, plan.long_batch])
    stepper = engine(checkpoint, plan.gpu, plan.precision, plan.compile, capacity, capacity)
    precision = plan.precision if plan.gpu else "fp32"
    scheduler = StepScheduler(stepper)
    rows = []
    for batch, steps, sampler in [*((b, plan.short_steps, "ddim") for b in plan.batches), (plan.long_batch, plan.long_steps, "ddpm")]:
        options = ImageOptions(np.arange(batch), np.full(batch, steps), np.full(batch, SAMPLER_ETA[sampler], np.float32))
        _sample(scheduler, replace(options, steps=np.full(batch, 2)))  # warm-up: graphs of this bucket
        if plan.gpu:
            torch.cuda.reset_peak_memory_stats()
        with gpu_load(steps == plan.long_steps) as gpu:
            times = [_timed(lambda: _sample(scheduler, options)) for _ in range(plan.repeats if steps == plan.short_steps else 1)]
        peak = torch.cuda.max_memory_reserved() / 2**20 if plan.gpu else None
        rows.append(_row("project", False, precision, "pytorch", batch, 1, steps, sampler, times, peak, command).under(gpu.load()))
    del scheduler, stepper  # the runner (and its GPU memory) goes with the stepper
    _free_gpu()
    return rows


def _sample(scheduler: StepScheduler, options: ImageOptions) -> np.ndarray:
    out: list[np.ndarray] = []
    scheduler.submit(Job(options, done=out.append, failed=_raise))
    scheduler.run_until_idle()
    return out[0]


def _raise(message: str) -> None:
    raise RuntimeError(message)


# ---- the diffusers peers ------------------------------------------------------------------------------


def peer_rows(plan: Plan, command: str) -> list[Row]:
    """Each peer at the short and the long workload; the fp32 eager one runs its long workload at `peer_batch`."""
    from .peers import measure_peer, release_peers

    device = "cuda" if plan.gpu else "cpu"
    rows = []
    for name in plan.peers:
        long_batch = plan.peer_batch if "eager" in name else plan.long_batch
        for batch, steps, sampler, repeats in (
            (plan.batches[-1], plan.short_steps, "ddim", plan.repeats),
            (long_batch, plan.long_steps, "ddpm", 1),
        ):
            with gpu_load(steps == plan.long_steps) as gpu:
                m = measure_peer(name, batch, steps, device, repeats, preset=plan.preset, sampler=sampler, warmup_calls=1)
            peak = m["peak_gpu_reserved_mb"]
            rows.append(
                Row(name, False, m["precision"], "diffusers", batch, 1, steps, sampler, m["images_per_s"], m["p50_ms"],
                    m["p99_ms"], peak, command).under(gpu.load())  # fmt: skip
            )
        release_peers()
    _free_gpu()
    return rows


# ---- through Triton ------------------------------------------------------------------------------------


def triton_rows(
    server: TritonServer, work: Path, plan: Plan, precision: str, fmt: str, command: str
) -> tuple[list[Row], list[int]]:
    """perf_analyzer over gRPC: the short batch sweep, the single-image concurrency sweep, the long runs;
    and the server's resident memory (MiB, tritonserver and its stubs) after each of them."""
    short = write_input_data(work / "short.json", seeds=64, STEPS=plan.short_steps, SAMPLER="ddim")
    long = write_input_data(work / "long.json", seeds=8, STEPS=plan.long_steps, SAMPLER="ddpm")
    cases = [(short, b, 1, plan.short_steps, "ddim") for b in plan.batches]
    cases += [(short, 1, c, plan.short_steps, "ddim") for c in plan.concurrency if c > 1 or 1 not in plan.batches]
    cases += [(long, plan.long_batch, 1, plan.long_steps, "ddpm")]
    rows, memory = [], []
    for data, batch, level, steps, sampler in cases:
        with gpu_load(steps == plan.long_steps) as gpu:
            m, stepped = perf_case(server, data, batch, level, steps == plan.long_steps, plan.stability_percent)
        rows.append(
            Row("project", True, precision, fmt, batch, level, steps, sampler, m.inferences_per_s, m.p50_ms,
                m.p99_ms, gpu_memory_used_mb(), command, stepped.mean_batch).under(gpu.load())  # fmt: skip
        )
        memory.append(server_rss(server) // 2**20)
    return rows, memory


@dataclass(frozen=True)
class Steps:
    """What `ddpm` ran during a measurement, from its Prometheus counters."""

    unet_calls: int
    images_stepped: int

    @property
    def mean_batch(self) -> float | None:
        return self.images_stepped / self.unet_calls if self.unet_calls else None


def perf_case(
    server: TritonServer, data: Path, batch: int, concurrency: int, long_run: bool, stability_percent: float
) -> tuple[PerfRow, Steps]:
    """perf_analyzer at one batch size and concurrency, and the U-Net steps `ddpm` ran meanwhile."""
    before = read_counters(server, STEP_COUNTERS)
    (m,) = run_perf_analyzer(
        server, data, concurrency=[concurrency], batch_size=batch, max_trials=3 if long_run else 6,
        requests_per_window=LONG_RUN_WINDOW if long_run else max(8, 2 * concurrency), stability_percent=stability_percent,
    )  # fmt: skip
    after = read_counters(server, STEP_COUNTERS)
    calls, images = (int(sum(after[c].values()) - sum(before[c].values())) for c in STEP_COUNTERS)
    return m, Steps(calls, images)


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _row(system: str, via_triton: bool, precision: str, fmt: str, batch: int, concurrency: int, steps: int,
         sampler: str, times: list[float], peak: float | None, command: str) -> Row:  # fmt: skip
    p50 = float(np.median(times))
    return Row(system, via_triton, precision, fmt, batch, concurrency, steps, sampler, batch / p50, p50 * 1000,
               float(np.max(times)) * 1000, peak, command)  # fmt: skip


def _free_gpu() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---- the result files ----------------------------------------------------------------------------------


def write_results(
    rows: list[Row], out_dir: Path, model: str, command: str, extra: dict[str, Any], merge: bool = False
) -> Path:
    """benchmarks/results/<date>-<device>.json, .md and .png; `merge` keeps the rows already in that file
    (a run split into parts on one machine, each part a separate command)."""
    head = stamp("cuda" if torch.cuda.is_available() else "cpu", command)
    device, stem = head["device"], f"{head['date'][:10]}-{device_slug(head['device'])}"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    commands = [command]
    if merge and path.is_file():
        earlier = json.loads(path.read_text())
        rows = [Row(**r) for r in earlier["rows"] if r["command"] != command] + rows
        commands = [c for c in earlier.get("commands", [earlier["command"]]) if c != command] + commands
        extra = {**{k: v for k, v in earlier.items() if k not in ("device", "date", "commit", "model", "command", "commands", "rows", "partial")}, **extra}
    record: dict[str, Any] = {
        **head, "command": " && ".join(commands), "model": model, "commands": commands, **extra, "rows": [asdict(r) for r in rows],
    }  # fmt: skip
    path.write_text(json.dumps(record, indent=2))
    lines = [
        f"# {model} on {device}", "", f"{record['date']}, commit {record['commit']}", "",
        *(f"`{c}`" for c in commands), "",
        *(f"- {key}: {value}" for key, value in extra.items()), "",
        "| system | via Triton | format | precision | sampler | steps | batch | concurrency | images/s | p50 ms | p99 ms | GPU MB | step batch | SM MHz, W (capped) |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for r in rows:
        memory = "" if r.peak_gpu_mb is None else f"{r.peak_gpu_mb:.0f}"
        step_batch = "" if r.mean_step_batch is None else f"{r.mean_step_batch:.1f}"
        load = "" if r.sm_clock_mhz is None else f"{r.sm_clock_mhz:.0f}, {r.gpu_power_w:.0f} ({r.power_capped:.0%})"
        lines.append(
            f"| {r.system} | {'yes' if r.via_triton else 'no'} | {r.format} | {r.precision} | {r.sampler} | {r.steps} | "
            f"{r.batch} | {r.concurrency} | {r.images_per_s:.2f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {memory} | {step_batch} | {load} |"
        )
    lines += ["", "GPU MB: in-process rows, torch.cuda.max_memory_reserved of the process; via Triton, nvidia-smi's "
              "device total after the measurement (every stub included). step batch: via Triton, images per U-Net "
              "call during the run (ddpm's Prometheus counters). SM MHz, W (capped): GPU 0 during the measurement, "
              "medians of nvidia-smi samples every 0.5 s, and the share of them clocked down by the power cap."]  # fmt: skip
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    from .benchplot import plot_results

    plot_results(path, path.with_suffix(".png"))
    return path


def bench_server(checkpoint: Path, repository: Path, plan: Plan, largest: int, home: Path, log_path: Path) -> TritonServer:
    """The server the bench measures (not started): `checkpoint` exported as the default repository would
    be, step batches and requests up to `largest` images, the default target of the device."""
    from ddpm_triton.export.configs import ServingOptions
    from ddpm_triton.export.repository import export_repository

    from .artifacts import Variant

    options = ServingOptions(
        max_batch_size=largest, max_step_batch=largest, max_queued_images=2 * largest, default_guidance_scale=1.0,
        gpu_precision=plan.precision, compile=plan.compile, unet=None if plan.gpu else "unet_onnx_fp32",
    )  # fmt: skip
    variants = [Variant("onnx", "fp32")]  # the CPU target's in-process artifact; the GPU one loads the weights
    export_repository(checkpoint, repository, variants, options)
    return TritonServer(
        repository, ServerFiles(home), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        model_config_name="gpu" if plan.gpu else None, log_path=log_path,
    )  # fmt: skip


def run_bench(plan: Plan, out_dir: Path, home: Path, command: str, merge: bool = False) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    largest = max([*plan.batches, plan.long_batch])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = random_checkpoint(plan.preset, work / "model.safetensors")
        model = f"{plan.preset} U-Net (random weights)"
        rows: list[Row] = []
        if "in_process" in plan.parts:
            rows += in_process_rows(checkpoint, plan, command)
            write_results(rows, out_dir, model, command, {"partial": "unfinished"}, merge)
        if "peers" in plan.parts:
            rows += peer_rows(plan, command)
            write_results(rows, out_dir, model, command, {"partial": "unfinished"}, merge)
        if "triton" not in plan.parts:
            return write_results(rows, out_dir, model, command, {}, merge)
        server = bench_server(checkpoint, work / "repository", plan, largest, home, out_dir / "bench-server.log")
        with server:
            loaded = server_rss(server) // 2**20
            served, memory = triton_rows(
                server, work, plan, plan.precision if plan.gpu else "fp32", "pytorch" if plan.gpu else "onnx", command
            )
            rows += served
    extra = {
        # After load, torch.compile's worker processes may still be alive: flatness is read between the cases.
        "server_host_memory_mib": {"after_load": loaded, "after_each_case": memory},
        "server": f"in-process U-Net ({'weights, ' + plan.precision + ', CUDA graphs' + (', torch.compile' if plan.compile else '') if plan.gpu else 'ONNX fp32'}), "
                  f"max_step_batch {largest}",
    }  # fmt: skip
    return write_results(rows, out_dir, model, command, extra, merge)
