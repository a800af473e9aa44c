"""Step-level batching through the real Triton server (issue 5): requests join running loops.

The `ddpm` model answers through response senders from its step scheduler, so a request that
arrives while another is mid-loop joins the next U-Net call instead of waiting for that loop to
end. These tests observe it from outside: response order, the model's own Prometheus counters,
the bound on images in progress, and the BLS execution path that the container uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from ddpm_triton.artifacts import Variant
from ddpm_triton.bench import random_checkpoint
from ddpm_triton.checkpoint import load_model
from ddpm_triton.export.configs import ServingOptions
from ddpm_triton.export.repository import export_repository
from ddpm_triton.pipeline import Pipeline
from ddpm_triton.soak import read_counters
from ddpm_triton.tritonserver import ServerFiles, TritonServer, free_port

pytestmark = pytest.mark.server

COUNTERS = ("ddpm_unet_calls", "ddpm_images_stepped")


def _generate(server: TritonServer, seeds: list[int], steps: int, timeout_s: float = 120) -> np.ndarray:
    n = len(seeds)
    inputs = []
    for name, array, datatype in (
        ("SEED", np.asarray(seeds, np.int64).reshape(n, 1), "INT64"),
        ("STEPS", np.full((n, 1), steps, np.int32), "INT32"),
    ):
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.infer("ddpm", inputs, client_timeout=timeout_s).as_numpy("IMAGE")


def _counters(server: TritonServer) -> dict[str, float]:
    """The model's counters once they stop moving: each is reported right after a response is sent."""
    last: dict[str, float] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = {name: values.get("ddpm", 0.0) for name, values in read_counters(server, COUNTERS).items()}
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    raise AssertionError(f"ddpm's counters kept changing for 15 s: {last}")


def test_a_short_request_overtakes_a_long_one_in_flight(server):
    finished: dict[str, float] = {}

    def timed(name: str, steps: int) -> None:
        _generate(server, [7], steps)
        finished[name] = time.monotonic()

    long = threading.Thread(target=timed, args=("long", 150))
    long.start()
    time.sleep(0.5)  # the long loop is running
    started = time.monotonic()
    timed("short", 3)
    long.join(timeout=300)
    assert finished["short"] < finished["long"], "the short request waited for the long loop to finish"
    assert finished["short"] - started < finished["long"] - started


def test_concurrent_requests_share_unet_calls(server):
    before = _counters(server)
    requests, steps = 8, 20
    with ThreadPoolExecutor(requests) as pool:
        images = list(pool.map(lambda seed: _generate(server, [seed], steps), range(requests)))
    assert all(i.shape == (1, 28, 28, 1) for i in images)
    after = _counters(server)
    stepped = after["ddpm_images_stepped"] - before["ddpm_images_stepped"]
    calls = after["ddpm_unet_calls"] - before["ddpm_unet_calls"]
    assert stepped == requests * steps  # every image-step counted once
    assert calls < requests * steps, f"{calls} U-Net calls for {requests} concurrent {steps}-step requests: no merging"


# ---- a server of a tiny model: the BLS path and the bound on images in progress ----------------------


CAPACITY = 8


@pytest.fixture(scope="module")
def bls_server(tmp_path_factory, triton_home) -> Iterator[tuple[TritonServer, Path]]:
    """A tiny random U-Net served with `unet_execution: bls` and room for CAPACITY images."""
    work = tmp_path_factory.mktemp("bls")
    checkpoint = random_checkpoint("tiny", work / "tiny.safetensors")
    options = ServingOptions(
        max_batch_size=CAPACITY, max_step_batch=CAPACITY, max_queued_images=CAPACITY, execution="bls",
        unet="unet_onnx_fp32", default_guidance_scale=2.0,
    )  # fmt: skip
    export_repository(checkpoint, work / "repository", [Variant("onnx", "fp32")], options)
    server = TritonServer(
        work / "repository", ServerFiles(triton_home), http_port=free_port(), grpc_port=free_port(),
        metrics_port=free_port(), log_path=work / "server.log",
    )  # fmt: skip
    with server:
        yield server, checkpoint


def test_bls_execution_matches_the_offline_pipeline(bls_server):
    server, checkpoint = bls_server
    model, config = load_model(checkpoint)
    images = _generate(server, [1, 2, 3], steps=5)
    reference = Pipeline(model, config).sample([1, 2, 3], steps=5, guidance_scale=2.0)
    assert images.shape == reference.shape
    # ONNX Runtime in the U-Net model vs PyTorch here: equal up to a rounding of the last level.
    assert np.abs(images.astype(int) - reference.astype(int)).max() <= 1


def test_requests_beyond_the_bound_are_refused_and_the_server_stays_up(bls_server):
    server, _ = bls_server
    with ThreadPoolExecutor(1) as pool:
        full = pool.submit(_generate, server, list(range(CAPACITY)), 60)
        time.sleep(0.5)  # the full request is admitted
        with pytest.raises(InferenceServerException) as refused:
            _generate(server, [99], 2)
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert "at capacity" in refused.value.message() and f"limit {CAPACITY}" in refused.value.message()
        assert full.result(timeout=300).shape[0] == CAPACITY
    assert server.ready()
    assert _generate(server, [99], 2).shape[0] == 1  # the room is given back
