"""The client library and its CLI against the real server."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from ddpm_client import AsyncDDPMClient, DDPMClient, GenerationError
from ddpm_client.cli import main as client_cli
from PIL import Image

from ddpm_triton.tritonserver import free_port

pytestmark = pytest.mark.server

STEPS = 3


@pytest.fixture(params=["grpc", "http"])
def client(server, request):
    url = server.grpc_url if request.param == "grpc" else server.http_url
    with DDPMClient(url, protocol=request.param) as client:
        yield client


def test_model_info_reads_the_config(client):
    info = client.model_info()
    assert info.max_batch_size > 0 and info.num_classes == 10 and info.image_size == 28


def test_generate_splits_requests_beyond_max_batch_size(client):
    n = client.model_info().max_batch_size + 3
    labels = [i % 10 for i in range(n)]
    images = client.generate(n, seed=100, steps=STEPS, class_label=labels)
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    # Batch boundaries do not change images: the last three equal the same seeds asked alone.
    alone = client.generate(3, seed=[100 + n - 3 + i for i in range(3)], steps=STEPS, class_label=labels[-3:])
    assert np.abs(images[-3:].astype(int) - alone.astype(int)).mean() <= 2


def test_pil_output(client):
    pictures = client.generate(2, seed=1, steps=STEPS, output="pil")
    assert all(isinstance(p, Image.Image) and p.size == (28, 28) for p in pictures)


def test_server_message_reaches_the_caller(client):
    with pytest.raises(GenerationError, match=r"STEPS must be in \[1, 1000\]") as err:
        client.generate(2, steps=5000)
    assert err.value.input_name == "STEPS" and err.value.attempts == 1  # invalid input is never retried


def test_async_client_matches_sync(server):
    async def main():
        async with AsyncDDPMClient(server.grpc_url) as client:
            return await client.generate(4, seed=7, steps=STEPS, class_label=3)

    with DDPMClient(server.grpc_url) as sync:
        expected = sync.generate(4, seed=7, steps=STEPS, class_label=3)
    assert asyncio.run(main()).tobytes() == expected.tobytes()


def test_unreachable_server_is_retried_then_reported():
    started = time.monotonic()
    with DDPMClient(f"127.0.0.1:{free_port()}", retries=2, backoff_s=0.2, timeout_s=5) as client:
        with pytest.raises(GenerationError) as err:
            client.generate(1)
    assert err.value.attempts == 3
    assert time.monotonic() - started >= 0.2 + 0.4  # backoff 0.2 s, then 0.4 s


def test_timeout_is_honoured(server):
    with DDPMClient(server.grpc_url, timeout_s=0.05, retries=0) as client:
        started = time.monotonic()
        with pytest.raises(GenerationError, match="(?i)deadline|timeout|timed out"):
            client.generate(8, steps=200)
    assert time.monotonic() - started < 5


def test_cli_writes_a_labelled_grid_and_each_image(server, tmp_path):
    grid, each = tmp_path / "grid.png", tmp_path / "each"
    code = client_cli(
        ["generate", "--url", server.grpc_url, "--per-class", "1", "--steps", str(STEPS),
         "--out", str(grid), "--individual-dir", str(each)]
    )  # fmt: skip
    assert code == 0 and Image.open(grid).size[0] > 28
    assert len(list(each.glob("*.png"))) == 10


def test_cli_reports_server_errors(server, capsys):
    assert client_cli(["generate", "--url", server.grpc_url, "-n", "1", "--steps", "0"]) == 1
    assert "STEPS must be in" in capsys.readouterr().err
