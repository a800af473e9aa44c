"""Where the time goes when the server batches steps across requests (benchmarks/profile_serving.py).

Each case (images per request x concurrent clients) runs perf_analyzer against the bench's server
and is reported beside what `ddpm` did meanwhile: U-Net calls per second and images per call (its
Prometheus counters) and, on a GPU, nvidia-smi's utilization. Optionally py-spy samples the `ddpm`
stub's Python threads during the case with the most clients: how much of the stepping thread goes
to waiting for the GPU, admitting requests, reading images back, answering.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .bench import Plan, bench_server, perf_case, random_checkpoint
from .perf import write_input_data
from .provenance import stamp
from .watchdog import stubs


class GpuUtilization:
    """nvidia-smi's utilization.gpu sampled every 0.2 s on a thread, while the `with` block runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuUtilization:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.wait(0.2):
            out = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
            if out:
                self.samples.append(float(out))

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Per thread of a py-spy raw (collapsed) profile: the functions with the most inclusive samples."""
    totals: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        totals[thread] += int(count)
        # Each frame once per sample, outermost first: ties in the ranking stay in stack order.
        for frame in dict.fromkeys(re.sub(r" \(\S*/([^/]+:\d+)\)", r" (\1)", f) for f in frames):
            inclusive[thread][frame] += int(count)
    lines = []
    for thread, total in totals.most_common(4):
        lines.append(f"{thread}: {total} samples")
        lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive[thread].most_common(top)]
    return "\n".join(lines)


def _py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen[str]:
    """Sample every thread, blocked ones too (`--idle`): without it a thread waiting for the GIL, an
    IPC reply or an OpenMP join is simply not sampled, and the profile of 64 clients on the H100
    showed `execute` as nearly idle while it was the bottleneck (benchmarks/README.md)."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250", "--threads",
               "--idle", "--nonblocking", "--format", "raw", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)


def profile(
    cases: list[tuple[int, int]], gpu: bool, preset: str, steps: int, precision: str, stability_percent: float,
    py_spy_s: int, home: Path, out: Path, command: str, compile: bool = True,
) -> dict[str, Any]:
    """Serve a random `preset` U-Net as the bench does and measure each (images per request, clients) case.

    `compile=False` serves the U-Net eager (a GPU step about twice as long): minutes less to load,
    and a check of whether host work that hides behind a long step shows behind a short one."""
    largest = max(b * c for b, c in cases)
    plan = Plan(
        preset=preset, gpu=gpu, batches=[], concurrency=[], short_steps=steps, long_steps=steps,
        long_batch=largest, repeats=1, peers=[], peer_batch=1, precision=precision, compile=gpu and compile,
        stability_percent=stability_percent,
    )  # fmt: skip
    if py_spy_s and shutil.which("py-spy") is None:
        raise FileNotFoundError("profiling the stub needs py-spy on PATH (pip install py-spy)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = random_checkpoint(preset, work / "model.safetensors")
        server = bench_server(checkpoint, work / "repository", plan, largest, home, out / "profile-server.log")
        started = time.monotonic()
        with server:
            load_s = time.monotonic() - started
            data = write_input_data(work / "short.json", seeds=64, STEPS=steps, SAMPLER="ddim")
            (ddpm,) = [s for s in stubs(server.process.pid) if s.model == "ddpm"]
            most = max(c for _, c in cases)
            for batch, concurrency in cases:
                spy, raw = None, out / f"profile-{batch}x{concurrency}.pyspy.txt"
                if py_spy_s and concurrency == most:
                    spy = _py_spy(ddpm.pid, py_spy_s, raw)
                with GpuUtilization() if gpu else contextlib.nullcontext() as utilization:
                    began = time.monotonic()
                    m, stepped = perf_case(server, data, batch, concurrency, False, stability_percent)
                    seconds = time.monotonic() - began
                row = {
                    "batch": batch, "concurrency": concurrency, "images_per_s": m.inferences_per_s, "p50_ms": m.p50_ms,
                    "p99_ms": m.p99_ms, "mean_step_batch": stepped.mean_batch,
                    "unet_calls_per_s": stepped.unet_calls / seconds,
                    "gpu_utilization_percent": utilization.mean if gpu else None,
                }  # fmt: skip
                if spy is not None:
                    spy.wait()
                    row["py_spy"] = {"raw": raw.name, "summary": summarize_profile(raw).splitlines()}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "py_spy"}), flush=True)
    return {
        **stamp("cuda" if gpu else "cpu", command), "model": f"{preset} U-Net (random weights)",
        "steps": steps, "compile": plan.compile, "server_load_s": round(load_s), "rows": rows,
    }  # fmt: skip
