"""Host time per denoising step of the step scheduler, with the U-Net taken out.

The 64-client rows of the H100 record spend about 3 ms per step beyond the U-Net; this isolates
the scheduler's own share: `--jobs` single-image requests in flight (staggered so about
jobs/steps of them finish and are replaced every step), a U-Net that returns zeros, 4x4 images,
CPU. What remains is the bookkeeping, admissions, read-backs and the eager step math.

    .venv/bin/python benchmarks/scheduler_overhead.py --jobs 64 --steps 50 --measure 2000
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ddpm_triton.config import DiffusionConfig
from ddpm_triton.diffusion import Diffusion
from ddpm_triton.provenance import describe_device, git_commit
from ddpm_triton.scheduler import ImageOptions, Job, StepScheduler
from ddpm_triton.stepper import Stepper


def host_ms_per_step(jobs: int, steps: int, measure: int) -> float:
    torch.set_num_threads(1)
    stepper = Stepper(
        lambda x, t, labels: torch.zeros_like(x), Diffusion(DiffusionConfig(1000, "linear")), (3, 4, 4),
        capacity=4 * jobs, max_steps=1000, null_label=None, device=torch.device("cpu"), max_batch=jobs,
    )  # fmt: skip
    scheduler = StepScheduler(stepper)
    answered: list[np.ndarray] = []

    def submit(seed: int, n_steps: int) -> None:
        options = ImageOptions(np.array([seed]), np.array([n_steps]), np.zeros(1, np.float32))
        scheduler.submit(Job(options, answered.append, lambda message: print("failed:", message)))

    for i in range(jobs):  # staggered: a steady state where about jobs/steps requests end per step
        submit(i, 1 + i % steps)
    # The worker's loop, driven here so that each answered request is replaced at once.
    seed, started = jobs, time.perf_counter()
    for _ in range(measure):
        before = len(answered)
        scheduler.poll()
        for _ in range(len(answered) - before):
            submit(seed, steps)
            seed += 1
    return (time.perf_counter() - started) / measure * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--measure", type=int, default=2000, help="steps timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    times = [host_ms_per_step(args.jobs, args.steps, args.measure) for _ in range(args.repeats)]
    record = {
        "device": describe_device("cpu"), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "command": f"python benchmarks/scheduler_overhead.py --jobs {args.jobs} "
        f"--steps {args.steps} --measure {args.measure} --repeats {args.repeats}",
        "host_ms_per_step": times, "median_ms": float(np.median(times)),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scheduler-overhead-{record['date'][:10]}-cpu.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"{record['median_ms']:.2f} ms host time per step (median of {times}); wrote {path}")


if __name__ == "__main__":
    main()
