#!/usr/bin/env python
"""What the HTTP front costs: perf_analyzer over HTTP through the front and, in the same run, to
tritonserver's own HTTP port behind it (127.0.0.1), on one server.

    python benchmarks/http_front.py --concurrency 1,2,4,8 --steps 1 --out benchmarks/results/

The load is `ddpm` with few DDIM steps, so that the model's own time is small and the difference
between the two rows is the front's extra hop (an aiohttp proxy in the server's supervisor
process). Writes http-front-<date>-<device>.json and prints a table; the rows alternate between
the two endpoints `--repeats` times, so a drift of the machine shows in both.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from ddpm_triton.perf import run_perf_analyzer, write_input_data
from ddpm_triton.provenance import stamp, write_result
from ddpm_triton.tritonserver import ServerFiles, TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,2,4,8", help="evenly spaced, comma-separated levels")
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each endpoint, alternating")
    parser.add_argument("--requests-per-window", type=int, default=200)
    parser.add_argument("--stability", type=float, default=10.0, help="perf_analyzer's --stability-percentage")
    parser.add_argument("--max-trials", type=int, default=10, help="perf_analyzer's windows before it gives up")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument(
        "--home", type=Path, default=ROOT / ".cache" / "tritonserver", help="unpacked Triton server files"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    files = ServerFiles(args.home)
    if not files.installed():
        parser.error(f"no Triton server files in {args.home}: run `make server` first")
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/http_front.py " + " ".join(shlex.quote(a) for a in given)
    work = Path(tempfile.mkdtemp(prefix="http-front-"))
    inputs = write_input_data(work / "inputs.json", STEPS=args.steps, SAMPLER="ddim")
    server = TritonServer(args.repository, files, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), load_models=("ddpm",), log_path=work / "server.log")  # fmt: skip
    endpoints = {"through the front": None, "tritonserver's own port": None}
    runs: dict[str, list[list[dict]]] = {name: [] for name in endpoints}
    with server:
        endpoints["tritonserver's own port"] = f"127.0.0.1:{server.triton_http_port}"
        for repeat in range(args.repeats):
            for name, url in endpoints.items():
                rows = run_perf_analyzer(server, inputs, levels, protocol="http", url=url,
                                         requests_per_window=args.requests_per_window,
                                         stability_percent=args.stability, max_trials=args.max_trials,
                                         csv_path=work / f"{repeat}-{len(runs[name])}-{name[:5]}.csv")  # fmt: skip
                runs[name].append([asdict(row) for row in rows])
                print(f"{name:24s} run {repeat + 1}: " + "  ".join(
                    f"c{r.concurrency} {r.inferences_per_s:.0f}/s p50 {r.p50_ms:.2f} ms" for r in rows), flush=True)

    table = ["| concurrency | front: infer/s | own port: infer/s | front: p50 ms | own port: p50 ms | p50 added, ms |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    summary = []
    for level in levels:  # perf_analyzer leaves out a level it could not stabilise
        median = {
            name: {key: statistics.median(row[key] for run in name_runs for row in run if row["concurrency"] == level)
                   for key in ("inferences_per_s", "p50_ms")}
            for name, name_runs in runs.items()
        }  # fmt: skip
        front, own = median["through the front"], median["tritonserver's own port"]
        summary.append({"concurrency": level, "front": front, "own_port": own})
        added = front["p50_ms"] - own["p50_ms"]
        table.append(f"| {level} | {front['inferences_per_s']:.0f} | {own['inferences_per_s']:.0f} | "
                     f"{front['p50_ms']:.2f} | {own['p50_ms']:.2f} | {added:+.2f} |")  # fmt: skip
    record = {**stamp("cpu", command), "steps": args.steps, "median_of_runs": summary, "runs": runs}
    path = write_result(args.out, "http-front", record)
    print("\n".join(table) + f"\n\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
