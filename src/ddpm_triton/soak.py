"""Sustained load on a real server: perf_analyzer at rising concurrency, failures and memory watched.

A soak answers two questions a short benchmark cannot: does any request fail when the server is
kept busy for minutes, and does the server's memory keep growing. For each concurrency level it
runs perf_analyzer (through `ddpm_triton.perf`) back to back until that level's share of the time
is spent, and records latency percentiles, the server's own request counters (the metrics
endpoint's `nv_inference_request_success` / `_failure`, which count every request, not only those
in perf_analyzer's measurement windows) and the resident memory of tritonserver and its Python
backend stubs. Memory is first read after a warm-up at the highest level, so one-time allocations
(arenas, the dynamic batcher's largest batches) are not taken for a leak.

`benchmarks/soak.py` is the command line; the test suite runs the same `soak()` for half a minute.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .perf import PerfAnalyzerFailed, run_perf_analyzer, write_input_data
from .provenance import describe_device, git_commit
from .tritonserver import ServerFiles, TritonServer, free_port

MiB = 1024 * 1024
RSS_GROWTH_FRACTION = 0.10
RSS_GROWTH_SLACK = 50 * MiB


def rss_bound(before: int) -> int:
    """The most resident memory the server may hold after the soak: 10% more than before, plus 50 MiB."""
    return int(before * (1 + RSS_GROWTH_FRACTION) + RSS_GROWTH_SLACK)


# ---- the server from outside ----------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (tritonserver's children are its triton_python_backend_stub processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident memory of pid; 0 for a process that has gone (or a zombie, which has no VmRSS line)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def server_rss(server: TritonServer) -> int:
    """Sum of the resident memory of tritonserver and every process below it."""
    assert server.process is not None, "the server is not running"
    return sum(rss_bytes(p) for p in process_tree(server.process.pid))


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)$")


def read_counters(
    server: TritonServer, names: Sequence[str] = ("nv_inference_request_success", "nv_inference_request_failure")
) -> dict[str, dict[str, float]]:
    """{metric: {model: value}} from the Prometheus endpoint, summed over a model's versions and reasons."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    counters: dict[str, dict[str, float]] = {name: {} for name in names}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in counters:
            continue
        model = re.search(r'model="([^"]*)"', match.group(2))
        key = model.group(1) if model else ""
        counters[match.group(1)][key] = counters[match.group(1)].get(key, 0.0) + float(match.group(3))
    return counters


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {m: int(after.get(m, 0) - before.get(m, 0)) for m in sorted(set(after) | set(before))}


# ---- the soak ------------------------------------------------------------------------------------


@dataclass
class Level:
    """One concurrency level: every perf_analyzer run at it, and the server's counters over its span."""

    concurrency: int
    seconds: float = 0.0
    runs: int = 0
    inferences_per_s: float = 0.0  # mean over the runs' measurement windows
    p50_ms: float = 0.0  # median of the runs' p50
    p99_ms: float = 0.0  # worst of the runs' p99
    succeeded: dict[str, int] = field(default_factory=dict)  # per model, from the metrics endpoint
    failed: dict[str, int] = field(default_factory=dict)
    perf_analyzer_errors: list[str] = field(default_factory=list)
    rss_after_mib: float = 0.0


@dataclass
class SoakReport:
    device: str
    date: str
    commit: str
    command: str
    steps: int
    seconds_per_level: float
    levels: list[Level]
    rss_before_mib: float
    rss_after_mib: float
    rss_bound_mib: float
    failures: int  # server-side failed requests of every model, plus failed perf_analyzer runs
    requests: int  # `ddpm` requests that succeeded
    elapsed_s: float

    @property
    def memory_ok(self) -> bool:
        return self.rss_after_mib <= self.rss_bound_mib

    @property
    def passed(self) -> bool:
        return self.failures == 0 and self.memory_ok and self.requests > 0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "memory_ok": self.memory_ok, "passed": self.passed}, indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"# Soak: `ddpm`, STEPS={self.steps}, {self.seconds_per_level:.0f} s per level",
            "",
            f"- date: {self.date}",
            f"- device: {self.device}",
            f"- commit: {self.commit}",
            f"- command: `{self.command}`",
            (
                f"- result: **{'passed' if self.passed else 'FAILED'}**: {self.requests} `ddpm` requests answered, "
                f"{self.failures} failed; server RSS {self.rss_before_mib:.0f} MiB -> {self.rss_after_mib:.0f} MiB "
                f"(bound {self.rss_bound_mib:.0f} MiB = before x 1.10 + 50 MiB); {self.elapsed_s:.0f} s in all"
            ),
            "",
            "| concurrency | perf_analyzer runs | ddpm requests | failed | infer/s | p50 ms | p99 ms | RSS after MiB |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for level in self.levels:
            lines.append(
                f"| {level.concurrency} | {level.runs} | {level.succeeded.get('ddpm', 0)} | "
                f"{sum(level.failed.values()) + len(level.perf_analyzer_errors)} | {level.inferences_per_s:.1f} | "
                f"{level.p50_ms:.0f} | {level.p99_ms:.0f} | {level.rss_after_mib:.0f} |"
            )
        errors = [e for level in self.levels for e in level.perf_analyzer_errors]
        if errors:
            lines += ["", "perf_analyzer errors:", "", *(f"- {e[:500]}" for e in errors)]
        lines += [
            "",
            (
                "Latencies are perf_analyzer's, per request of one image (client side, gRPC); p50 is the median of "
                "the runs' p50, p99 the worst run's p99. Request counts and failures are the server's own counters "
                "(`nv_inference_request_success` / `_failure`), so requests outside perf_analyzer's measurement "
                "windows count too. RSS is tritonserver plus its Python backend stubs, from /proc."
            ),
        ]
        return "\n".join(lines) + "\n"


def soak(
    server: TritonServer,
    seconds: float,
    concurrency: Sequence[int] = (1, 2, 4, 8),
    steps: int = 4,
    work_dir: Path | None = None,
    command: str = "",
    log=print,
) -> SoakReport:
    """Load a running server for about `seconds`, split evenly over the concurrency levels.

    Each level runs perf_analyzer at least once (3 windows of at least `concurrency` requests), so a
    level slower than its share overshoots it.
    """
    started, device = time.monotonic(), describe_device()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    levels = sorted(set(concurrency))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work_dir or tmp)
        data = write_input_data(work / "soak-input.json", seeds=256, STEPS=steps)

        # Warm-up at the highest level: the largest batches and every code path allocated once.
        try:
            run_perf_analyzer(server, data, concurrency=[levels[-1]], requests_per_window=2 * levels[-1],
                              stability_percent=1000)  # fmt: skip
        except PerfAnalyzerFailed as err:
            log(f"warm-up failed: {err}")
        rss_before = server_rss(server)
        log(f"server RSS after warm-up: {rss_before / MiB:.0f} MiB")
        first = read_counters(server)

        budget = seconds / len(levels)
        results, rate = [], None
        for c in levels:
            level, level_start = Level(c), time.monotonic()
            before = read_counters(server)
            p50s, p99s, rates = [], [], []
            while time.monotonic() - level_start < budget:
                left = budget - (time.monotonic() - level_start)
                # perf_analyzer measures 3 windows; size them to fill what is left of this level (<= 60 s a
                # run), but at least one request per concurrent worker: a slow level overshoots its share.
                window = max(c, int((rate or c) * min(left, 60.0) / 3))
                try:
                    rows = run_perf_analyzer(server, data, concurrency=[c], requests_per_window=window,
                                             stability_percent=1000)  # fmt: skip
                except PerfAnalyzerFailed as err:
                    level.perf_analyzer_errors.append(str(err))
                    log(f"concurrency {c}: perf_analyzer failed: {str(err)[:300]}")
                    continue
                level.runs += 1
                (row,) = rows
                rate = row.inferences_per_s
                p50s.append(row.p50_ms), p99s.append(row.p99_ms), rates.append(row.inferences_per_s)
            after = read_counters(server)
            level.seconds = time.monotonic() - level_start
            level.succeeded = _delta(after["nv_inference_request_success"], before["nv_inference_request_success"])
            level.failed = _delta(after["nv_inference_request_failure"], before["nv_inference_request_failure"])
            if level.runs:
                level.inferences_per_s = statistics.fmean(rates)
                level.p50_ms, level.p99_ms = statistics.median(p50s), max(p99s)
            level.rss_after_mib = server_rss(server) / MiB
            log(
                f"concurrency {c:3d}: {level.runs} runs, {level.succeeded.get('ddpm', 0)} requests, "
                f"{sum(level.failed.values())} failed, {level.inferences_per_s:.1f}/s, p50 {level.p50_ms:.0f} ms, "
                f"p99 {level.p99_ms:.0f} ms, RSS {level.rss_after_mib:.0f} MiB"
            )
            results.append(level)

        last = read_counters(server)
        rss_after = server_rss(server)
    failed = _delta(last["nv_inference_request_failure"], first["nv_inference_request_failure"])
    succeeded = _delta(last["nv_inference_request_success"], first["nv_inference_request_success"])
    return SoakReport(
        device=device,
        date=date,
        commit=git_commit(),
        command=command,
        steps=steps,
        seconds_per_level=budget,
        levels=results,
        rss_before_mib=rss_before / MiB,
        rss_after_mib=rss_after / MiB,
        rss_bound_mib=rss_bound(rss_before) / MiB,
        failures=sum(failed.values()) + sum(len(level.perf_analyzer_errors) for level in results),
        requests=succeeded.get("ddpm", 0),
        elapsed_s=time.monotonic() - started,
    )


def run(
    repository: Path,
    files: ServerFiles,
    seconds: float,
    concurrency: Sequence[int],
    steps: int,
    log_path: Path | None = None,
    command: str = "",
    log=print,
) -> SoakReport:
    """Start a server of our own on free ports, soak it, stop it."""
    server = TritonServer(
        repository, files, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=log_path
    )
    log(f"starting tritonserver on {repository} ...")
    with server:
        return soak(server, seconds, concurrency, steps, command=command, log=log)


def write_report(report: SoakReport, out_dir: Path, stem: str | None = None) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or "soak-" + report.date.replace(":", "").replace("+0000", "Z")
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(report.to_json())
    md_path.write_text(report.to_markdown())
    return json_path, md_path


