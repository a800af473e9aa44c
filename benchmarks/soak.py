#!/usr/bin/env python
"""Soak the real tritonserver: perf_analyzer at each concurrency for a share of --minutes.

    python benchmarks/soak.py --minutes 3 --concurrency 1,2,4,8,16,32,64 --out benchmarks/results/

Starts its own server on model_repository/ (free ports, 127.0.0.1), then for each level runs
perf_analyzer back to back with small STEPS, and writes soak-<date>.json and .md: p50/p99 per
level, the server's failed-request counters, and the resident memory of tritonserver and its
Python stubs before and after (bound: before x 1.10 + 50 MiB). Exits 1 if any request failed or
memory grew past the bound. The work is ddpm_triton.soak, which the test suite also runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from ddpm_triton.soak import run, write_report
from ddpm_triton.tritonserver import ServerFiles

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="total load time, split evenly over the levels")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="comma-separated concurrency levels")
    parser.add_argument(
        "--steps", type=int, default=4, help="denoising steps per request (small: the soak is about the server)"
    )
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument(
        "--home", type=Path, default=ROOT / ".cache" / "tritonserver", help="unpacked Triton server files"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--server-log",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ddpm-soak-server.log",
        help="tritonserver's log (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        parser.error(f"--concurrency needs positive integers, got {args.concurrency!r}")
    files = ServerFiles(args.home)
    if not files.installed():
        parser.error(f"no Triton server files in {args.home}: run `make server` first")
    command = "python benchmarks/soak.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"tritonserver log: {args.server_log}")
    report = run(args.repository, files, args.minutes * 60, levels, args.steps, args.server_log, command=command)
    json_path, md_path = write_report(report, args.out)
    print(report.to_markdown())
    print(f"wrote {json_path} and {md_path}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
