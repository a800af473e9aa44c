"""The GPU's clock and power while a measurement runs, from nvidia-smi polled on a thread.

A benchmark row is only comparable with another if the GPU ran at the same clock. On the H100 the
fp8 sampler's 1000-step requests ran at the 700 W power cap, with the SM clock down to 1,800 MHz,
while replays of the same CUDA graph ran at 1,980 MHz: 2.9% apart (benchmarks/README.md). Each
bench row carries what was sampled during it, so a record says which rows ran capped.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
from dataclasses import dataclass
from types import TracebackType

POWER_CAP_REASON = 0x4  # nvidia-smi's clocks_throttle_reasons bit: the software power cap
_QUERY = "--query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active"


@dataclass(frozen=True)
class GpuLoad:
    """Medians over a measurement's samples, and the share of them clocked down by the power cap."""

    sm_clock_mhz: float
    power_w: float
    power_capped: float  # 0..1


def parse_sample(line: str) -> tuple[float, float, bool]:
    """(SM MHz, watts, capped) of one `nvidia-smi --format=csv,noheader,nounits` line of `_QUERY`."""
    clock, power, reasons = (field.strip() for field in line.split(","))
    return float(clock), float(power), bool(int(reasons, 16) & POWER_CAP_REASON)


def summarize(samples: list[tuple[float, float, bool]]) -> GpuLoad | None:
    if not samples:
        return None
    clocks, powers, capped = zip(*samples)
    return GpuLoad(statistics.median(clocks), statistics.median(powers), sum(capped) / len(samples))


class GpuLoadSampler:
    """`with GpuLoadSampler() as sampler: ...`, then `sampler.load()`: GPU 0's samples from the block,
    or None where nvidia-smi is absent (a CPU host), answered nothing, or `active` is false (the
    caller's measurement is one that the queries would disturb)."""

    def __init__(self, interval_s: float = 0.5, active: bool = True) -> None:
        self.interval_s = interval_s
        self._samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="gpu-load", daemon=True) if active else None

    def __enter__(self) -> GpuLoadSampler:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def load(self) -> GpuLoad | None:
        return summarize(self._samples)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", _QUERY, "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True, check=True
                )  # fmt: skip
                self._samples.append(parse_sample(out.stdout.strip()))
            except (OSError, subprocess.CalledProcessError, ValueError):
                return  # no GPU to watch: the measurement goes on without samples
            self._stop.wait(self.interval_s)

