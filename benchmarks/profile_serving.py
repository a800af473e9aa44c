"""Where the time goes when the server batches steps across requests: one perf_analyzer case at a time.

For each case (images per request x concurrent clients, 50 DDIM steps) against the bench's server
(`ddpm-triton bench`'s export and config) it reports images/s, p50 and p99 beside U-Net calls per
second and images per call (`ddpm`'s counters) and GPU utilization; `--py-spy SECONDS` also
profiles the `ddpm` stub during the case with the most clients (py-spy must be on PATH). The work
is ddpm_triton.profiling. Comparing "1x64" (64 single-image clients) with "64x1" (one 64-image
request at a time) separates the cost of step-level batching from the U-Net's:

    python benchmarks/profile_serving.py --device gpu --cases 1x1,64x1,256x1,1x64 --py-spy 12
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ddpm_triton.profiling import profile
from ddpm_triton.provenance import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="gpu")
    parser.add_argument("--preset", default="cifar10")
    parser.add_argument("--cases", default="64x1,1x64", help="images per request x concurrency, comma-separated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precision", default="fp16", help="GPU compute precision")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the U-Net (GPU)")
    parser.add_argument("--stability", type=float, default=50.0, help="perf_analyzer --stability-percentage")
    parser.add_argument("--py-spy", type=int, default=0, metavar="SECONDS", help="profile ddpm's stub this long")
    parser.add_argument("--home", type=Path, default=Path(".cache/tritonserver"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [(int(b), int(c)) for b, c in (case.split("x") for case in args.cases.split(","))]
    record = profile(
        cases, args.device == "gpu", args.preset, args.steps, args.precision, args.stability, args.py_spy, args.home,
        args.out, shlex.join(["python", "benchmarks/profile_serving.py", *sys.argv[1:]]), args.compile,
    )  # fmt: skip
    print(f"wrote {write_result(args.out, 'profile', record)}")


if __name__ == "__main__":
    main()
