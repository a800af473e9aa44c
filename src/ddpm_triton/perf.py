"""Driving the real perf_analyzer against `ddpm` and reading back its numbers.

One function builds the input-data file (SEED is required and every image should differ), runs
perf_analyzer with the server's environment, and parses its CSV: the load tests, the soak test
and the benchmarks all measure through here.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from ddpm_client import contract

from .tritonserver import TritonServer


class PerfAnalyzerFailed(RuntimeError):
    """perf_analyzer exited non-zero; the message carries its output."""


@dataclass(frozen=True)
class PerfRow:
    """One concurrency level of a perf_analyzer run; latencies in milliseconds."""

    concurrency: int
    inferences_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float


def write_input_data(path: Path, seeds: int = 64, **options: Any) -> Path:
    """A perf_analyzer --input-data file: `seeds` requests, distinct SEEDs, the given options on each."""
    specs = {spec.name: spec for spec in contract.INPUTS}
    entries = []
    for seed in range(seeds):
        entry = {contract.SEED.name: {"content": [seed], "shape": [1]}}
        for name, value in options.items():
            if name not in specs:
                raise ValueError(f"{name} is not a ddpm input; choose from {', '.join(specs)}")
            entry[name] = {"content": [value], "shape": [1]}
        entries.append(entry)
    path.write_text(json.dumps({"data": entries}))
    return path


def run_perf_analyzer(
    server: TritonServer,
    input_data: Path,
    concurrency: Sequence[int] = (1,),
    batch_size: int = 1,
    protocol: str = "grpc",
    requests_per_window: int = 10,
    max_trials: int = 3,
    stability_percent: float = 10.0,
    model: str = contract.MODEL_NAME,
    csv_path: Path | None = None,
    url: str | None = None,
) -> list[PerfRow]:
    """Measure `model` at each concurrency in count windows (requests take long; time windows would starve).

    perf_analyzer repeats a window until `stability_percent` holds between the last three; a smoke run
    on a shared CPU passes a loose value, a benchmark keeps the strict default. `url` (host:port)
    overrides the server's public one for `protocol`.
    """
    csv_path = csv_path or input_data.with_suffix(".csv")
    url = url or (server.grpc_url if protocol == "grpc" else server.http_url)
    command = [
        str(server.files.perf_analyzer),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "-b", str(batch_size),
        "--input-data", str(input_data),
        "--concurrency-range", f"{min(concurrency)}:{max(concurrency)}:{_step(concurrency)}",
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(requests_per_window),
        "--max-trials", str(max_trials),
        "--stability-percentage", str(stability_percent),
        "--percentile", "99",
        "-f", str(csv_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=server.files.env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PerfAnalyzerFailed(f"perf_analyzer exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return parse_csv(csv_path)


def _step(concurrency: Sequence[int]) -> int:
    levels = sorted(set(concurrency))
    steps = {b - a for a, b in pairwise(levels)}
    if len(steps) > 1:
        raise ValueError(f"perf_analyzer takes an evenly spaced concurrency range, got {levels}")
    return steps.pop() if steps else 1


def parse_csv(path: Path) -> list[PerfRow]:
    """perf_analyzer's -f report, by concurrency (the file orders rows by throughput); latencies there are µs."""
    with path.open() as f:
        rows = sorted(csv.DictReader(f), key=lambda row: int(row["Concurrency"]))
    return [
        PerfRow(
            concurrency=int(row["Concurrency"]),
            inferences_per_s=float(row["Inferences/Second"]),
            p50_ms=float(row["p50 latency"]) / 1000,
            p90_ms=float(row["p90 latency"]) / 1000,
            p99_ms=float(row["p99 latency"]) / 1000,
            avg_ms=sum(float(row[k]) for k in _LATENCY_PARTS if k in row) / 1000,
        )
        for row in rows
    ]


# perf_analyzer splits the average latency into these parts (client side plus server queue/compute).
_LATENCY_PARTS = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
                  "Server Compute Infer", "Server Compute Output", "Client Recv")  # fmt: skip
