"""`ddpm-triton serve` (what `make serve` runs): foreground, ready on the given ports, Ctrl-C stops it cleanly."""

import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from ddpm_triton.tritonserver import free_port

pytestmark = pytest.mark.server


def test_serve_answers_then_stops_on_ctrl_c(triton_home):
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
        started = time.monotonic()
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert process.wait(timeout=60) == 0, "".join(lines[-20:])
        assert time.monotonic() - started < 60
    finally:
        process.kill()
        reader.join(5)
    assert any(f"ready: HTTP 127.0.0.1:{http}" in line for line in lines)
