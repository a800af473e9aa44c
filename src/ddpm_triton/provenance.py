"""Where and from what a measurement came: every result file in benchmarks/results records both."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def describe_device(device: str = "cpu") -> str:
    """'GPU: <name>' for a CUDA device, else the CPU model, the cores visible and the load at the start."""
    if str(device).startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(torch.device(device))}"
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores visible; load average at start {os.getloadavg()[0]:.1f}"


def device_slug(description: str) -> str:
    """A describe_device() text as a file-name part: 'GPU: NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    name = description.split(",")[0].removeprefix("GPU: ").removeprefix("CPU: ")
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


COMMIT_ENV = "DDPM_TRITON_COMMIT"


def git_commit() -> str:
    """HEAD of the checkout this package runs from, marked when tracked files differ from it.

    A copy of the tree that travels without its history (a lent GPU host gets the files, and a
    `.git` that can be stale) cannot know its commit: $DDPM_TRITON_COMMIT names it, and wins.
    """
    if os.environ.get(COMMIT_ENV):
        return f"{os.environ[COMMIT_ENV]} (from ${COMMIT_ENV})"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def stamp(device: str, command: str) -> dict[str, str]:
    """The fields a result file starts with: the device, the date (UTC), the commit, the command."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"device": describe_device(device), "date": now, "commit": git_commit(), "command": command}


def write_result(out_dir: Path, kind: str, record: dict[str, Any]) -> Path:
    """`record` (a `stamp` and what was measured) as out_dir/<kind>-<date>-<device>.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}-{record['date'][:10]}-{device_slug(record['device'])}.json"
    path.write_text(json.dumps(record, indent=2))
    return path
