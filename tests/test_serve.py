"""`ddpm-triton serve` (what `make serve` runs): foreground, ready on the given ports, brings back a
model whose stub process died (and says so), keeps running when the watchdog restarts tritonserver
for `ddpm`, Ctrl-C stops it cleanly."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ddpm_triton.tritonserver import free_port
from ddpm_triton.watchdog import stubs

pytestmark = pytest.mark.server


def test_serve_answers_restarts_a_killed_stub_then_stops_on_ctrl_c(triton_home):
    from conftest import REPOSITORY

    http = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ddpm_triton", "serve", "--repository", str(REPOSITORY), "--home", str(triton_home),
         "--http-port", str(http), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("ready: "):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(180), "".join(lines[-20:])
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        # A U-Net that nothing calls here: kill its stub; the watchdog reloads it and says so.
        (victim,) = [stub for stub in stubs(_tritonserver(process.pid)) if stub.model == "unet_onnx_int8"]
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while not any("model 'unet_onnx_int8' serves again" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines[-20:])
            time.sleep(0.2)
        assert any(re.search(r"stub process of model 'unet_onnx_int8' died \(.*\); reloading", line) for line in lines)
        # `ddpm` (on_stub_death: restart_server): tritonserver is restarted under the same serve process.
        old = _tritonserver(process.pid)
        (ddpm,) = [stub for stub in stubs(old) if stub.model == "ddpm"]
        os.kill(ddpm.pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not any("tritonserver serves again: restarted" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines[-20:])
            time.sleep(0.2)
        assert _tritonserver(process.pid) != old
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        # Ctrl-C after a restart: Triton alone would wait out its 30 s exit timeout for the dead version, then exit 1.
        started = time.monotonic()
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert process.wait(timeout=60) == 0, "".join(lines[-20:])
        assert time.monotonic() - started < 20
    finally:
        process.kill()
        reader.join(5)
    assert any(f"ready: HTTP 127.0.0.1:{http}" in line for line in lines)
    assert any(line.startswith("watchdog: checks every 1 s") for line in lines)
    for dead in (victim, ddpm):
        assert not Path("/dev/shm", dead.region).exists(), f"serve left {dead.model}'s dead stub's shared memory behind"


def _tritonserver(serve_pid: int) -> int:
    """The pid of the tritonserver that `ddpm-triton serve` (serve_pid) started: its child."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == serve_pid and "tritonserver" in stat.split(")")[0]:
                    return int(entry)
            except (OSError, ValueError):
                continue
    raise AssertionError(f"no tritonserver under pid {serve_pid}")
