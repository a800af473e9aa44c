"""Time per step of the step engine when single-image requests arrive staggered, in-process.

`--jobs` single-image requests are kept in flight (staggered so that about jobs/steps of them
finish and are replaced at every step, as with that many clients) and the time per step is
compared with one request of `--jobs` images, which has the same U-Net batch and no admissions or
answers. Two ways to run it:

- `--unet zeros` (CPU): a U-Net that returns zeros on 4x4 images, so what is timed is the
  scheduler's own host work: bookkeeping, admissions, read-backs and the eager step math.

      python benchmarks/scheduler_overhead.py --jobs 64 --steps 50 --measure 2000

- `--unet cifar10 --device cuda` (a GPU host): the real U-Net (random weights, fp16, CUDA graphs;
  `--compile` as the server does it), so the in-process twin of benchmarks/profile_serving.py's
  "1x64 against 64x1", without Triton in the way. `--run-ahead 2,4,8` also sweeps how many steps
  the host may queue ahead of the GPU.

      python benchmarks/scheduler_overhead.py --unet cifar10 --device cuda --jobs 64 --measure 500 --run-ahead 2,4,8
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddpm_triton.bench import engine, random_checkpoint
from ddpm_triton.config import DiffusionConfig
from ddpm_triton.diffusion import Diffusion
from ddpm_triton.provenance import stamp, write_result
from ddpm_triton.scheduler import ImageOptions, Job, StepScheduler
from ddpm_triton.stepper import Stepper


def zeros_stepper(jobs: int) -> Stepper:
    """4x4 images and a U-Net that returns zeros: only the engine's own work is left to time."""
    return Stepper(
        lambda x, t, labels: torch.zeros_like(x), Diffusion(DiffusionConfig(1000, "linear")), (3, 4, 4),
        capacity=4 * jobs, max_steps=1000, null_label=None, device=torch.device("cpu"), max_batch=jobs,
    )  # fmt: skip


def unet_stepper(preset: str, device: str, jobs: int, compile: bool) -> Stepper:
    """The preset's U-Net with random weights, as the server runs it (on a GPU: fp16, CUDA graphs)."""
    checkpoint = random_checkpoint(preset, Path(tempfile.mkdtemp()) / "model.safetensors")
    stepper = engine(checkpoint, device.startswith("cuda"), "fp16", compile, capacity=4 * jobs, max_batch=jobs)
    stepper.warm_up(guided=False)
    return stepper


def _submit(scheduler: StepScheduler, seeds: np.ndarray, steps: int, answered: list[np.ndarray]) -> None:
    options = ImageOptions(seeds, np.full(len(seeds), steps), np.zeros(len(seeds), np.float32))
    scheduler.submit(Job(options, answered.append, lambda message: print("failed:", message)))


def staggered_ms_per_step(scheduler: StepScheduler, jobs: int, steps: int, measure: int) -> tuple[float, float, float]:
    """(ms per step, of which in the worker's `poll`, mean images per step) with `jobs` single-image
    requests, each replaced as it finishes. Submitting (which prepares a request's images) is Triton's
    `execute` thread's work in the server; here it runs between polls and counts only in the first."""
    answered: list[np.ndarray] = []
    for i in range(jobs):  # staggered: a steady state where about jobs/steps requests end per step
        _submit(scheduler, np.array([i]), 1 + i % steps, answered)
    seeds = iter(range(jobs, 2**62))

    def turn() -> float:
        """The worker's loop, driven here so that each answer is replaced at once; returns the poll's time."""
        before, polled = len(answered), time.perf_counter()
        scheduler.poll()
        polling = time.perf_counter() - polled
        for _ in range(len(answered) - before):
            _submit(scheduler, np.array([next(seeds)]), steps, answered)
        return polling

    for _ in range(2 * steps):  # into the steady state (and every graph warm)
        turn()
    calls, images = scheduler.counters.unet_calls, scheduler.counters.images_stepped
    _synchronize(scheduler)
    started = time.perf_counter()
    polling = sum(turn() for _ in range(measure))
    _synchronize(scheduler)
    seconds = time.perf_counter() - started
    mean_batch = (scheduler.counters.images_stepped - images) / (scheduler.counters.unet_calls - calls)
    scheduler.run_until_idle()
    return seconds / measure * 1000, polling / measure * 1000, mean_batch


def batch_ms_per_step(scheduler: StepScheduler, jobs: int, steps: int) -> float:
    """ms per step of one request of `jobs` images (the same U-Net batch, one admission, one answer)."""
    answered: list[np.ndarray] = []
    _submit(scheduler, np.arange(jobs), steps, answered)
    _synchronize(scheduler)
    started = time.perf_counter()
    scheduler.run_until_idle()
    return (time.perf_counter() - started) / steps * 1000


def _synchronize(scheduler: StepScheduler) -> None:
    if scheduler.stepper.device.type == "cuda":
        torch.cuda.synchronize(scheduler.stepper.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--measure", type=int, default=2000, help="steps timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unet", default="zeros", help="'zeros' or a preset (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net (static shapes per bucket)")
    parser.add_argument("--run-ahead", default="2", help="comma-separated values of Stepper.run_ahead to measure")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.unet == "zeros":
        torch.set_num_threads(1)
        stepper = zeros_stepper(args.jobs)
    else:
        stepper = unet_stepper(args.unet, args.device, args.jobs, args.compile)
    scheduler = StepScheduler(stepper)
    rows = []
    for run_ahead in (int(n) for n in args.run_ahead.split(",")):
        stepper.run_ahead = run_ahead
        staggered = [staggered_ms_per_step(scheduler, args.jobs, args.steps, args.measure) for _ in range(args.repeats)]
        batch = [batch_ms_per_step(scheduler, args.jobs, args.steps) for _ in range(args.repeats)]
        row = {
            "run_ahead": run_ahead, "staggered_ms_per_step": [ms for ms, _, _ in staggered],
            "staggered_poll_ms_per_step": [poll for _, poll, _ in staggered],
            "staggered_mean_step_batch": [b for _, _, b in staggered], "batch_ms_per_step": batch,
            "median_staggered_ms": float(np.median([ms for ms, _, _ in staggered])),
            "median_staggered_poll_ms": float(np.median([poll for _, poll, _ in staggered])),
            "median_batch_ms": float(np.median(batch)),
        }  # fmt: skip
        rows.append(row)
        print(f"run_ahead {run_ahead}: {args.jobs} staggered requests {row['median_staggered_ms']:.2f} ms/step "
              f"({row['median_staggered_poll_ms']:.2f} in the worker's poll), one {args.jobs}-image request "
              f"{row['median_batch_ms']:.2f} ms/step", flush=True)  # fmt: skip
    record = {
        **stamp(args.device, shlex.join(["python", "benchmarks/scheduler_overhead.py", *sys.argv[1:]])),
        "unet": args.unet, "compile": args.compile, "jobs": args.jobs, "steps": args.steps, "rows": rows,
    }  # fmt: skip
    print(f"wrote {write_result(args.out, 'scheduler-overhead', record)}")


if __name__ == "__main__":
    main()
