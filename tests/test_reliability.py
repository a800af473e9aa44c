"""Reliability through the real tritonserver: bad input, sustained load, and faults caused on purpose.

Bad input runs against the session server (it must stay ready for every other test). The soak
reuses it too, for half a minute. Every fault test starts a server of its own (explicit model
control, only `ddpm` and its U-Net loaded, so it starts in half the time), so a killed stub or a
reload cannot disturb any other test.

What Triton 2.51 itself does, found by these tests and relied on below (src/ddpm_triton/watchdog.py
has the whole list):
- a killed `triton_python_backend_stub` fails the requests its model is executing within about a
  second ("Stub process 'unet_onnx_fp32_0_0' is not healthy.", which `ddpm` passes on when its U-Net
  call fails), and every later request the same way, but is NOT restarted: python_backend removed
  the restart in r24.06, and the model keeps reporting READY. The watchdog that every
  `TritonServer` runs sees the stub gone from the process table and reloads the model through the
  model-repository API (admin key); the fault test checks that it serves again with no one's help.
- `ddpm` answers through response senders from its scheduler's thread; the requests in flight when
  its stub dies are never answered (a reload does not release them), so its config asks the
  watchdog for `on_stub_death: restart_server`: `TritonServer` kills the process, which closes
  their connections, and starts it again on the same ports.
- `load` of an unchanged, loaded model is a no-op; a config override with a changed parameter
  forces a real reload (new stub), which is what `_force_reload` (and the watchdog) send.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from ddpm_client import DDPMClient
from geventhttpclient.response import HTTPConnectionClosed
from tritonclient.utils import InferenceServerException

from ddpm_triton.soak import process_tree, rss_bound, soak, write_report
from ddpm_triton.tritonserver import ADMIN_HEADER, ServerFiles, TritonServer, free_port
from ddpm_triton.watchdog import Stub, alive, stubs

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"  # as conftest's `server`
STEPS = 2
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER  # Triton prefixes gRPC restriction headers


# ---- talking to a server ------------------------------------------------------------------------

Spec = tuple[str, np.ndarray, str]  # input name, array (batch first), wire datatype


def _tensors(module: Any, specs: list[Spec]) -> list[Any]:
    tensors = []
    for name, array, datatype in specs:
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


@contextmanager
def _http(server: TritonServer, timeout_s: float = 60) -> Iterator[httpclient.InferenceServerClient]:
    """An HTTP client that is closed even when its call raises: Triton's graceful shutdown waits up
    to its exit timeout for open HTTP connections."""
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=timeout_s)
    try:
        yield client
    finally:
        client.close()


def _infer(server: TritonServer, specs: list[Spec], protocol: str = "grpc", timeout_s: float = 120,
           model: str = "ddpm", output: str = "IMAGE") -> np.ndarray:  # fmt: skip
    if protocol == "grpc":
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            return client.infer(model, _tensors(grpcclient, specs), client_timeout=timeout_s).as_numpy(output)
    with _http(server, timeout_s) as client:
        return client.infer(model, _tensors(httpclient, specs)).as_numpy(output)


def _good(seeds: list[int], steps: int = STEPS) -> list[Spec]:
    n = len(seeds)
    return [
        ("SEED", np.asarray(seeds, np.int64).reshape(n, 1), "INT64"),
        ("STEPS", np.full((n, 1), steps, np.int32), "INT32"),
    ]


def _status_of(err: InferenceServerException, protocol: str) -> str:
    return err.status() if protocol == "grpc" else str(err.status())


def _max_batch_size(server: TritonServer) -> int:
    with _http(server) as client:
        return int(client.get_model_config("ddpm")["max_batch_size"])


# ---- 1. bad input --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A request outside the contract: its inputs (given max_batch_size), and the message it must get."""

    id: str
    specs: Callable[[int], list[Spec]]
    message: Callable[[int], str]  # regex, given max_batch_size
    by: str  # who rejects it: "triton" (core, before the model runs) or "ddpm" (our validation)


def _seed(n: int = 1, dtype: Any = np.int64, datatype: str = "INT64", shape: tuple[int, ...] | None = None) -> Spec:
    return ("SEED", np.arange(n, dtype=dtype).reshape(shape or (n, 1)), datatype)


def _steps(
    values: list[int], dtype: Any = np.int32, datatype: str = "INT32", shape: tuple[int, ...] | None = None
) -> Spec:
    return ("STEPS", np.asarray(values, dtype).reshape(shape or (len(values), 1)), datatype)


OVERSIZED = 60_000_000  # bytes of one SAMPLER string: under the HTTP front's body limit, so ddpm sees it

BAD = [
    # wrong dtype: Triton core names the input, what was sent and what the model expects
    Bad("SEED-as-FP32", lambda m: [_seed(1, np.float32, "FP32"), _steps([STEPS])],
        lambda m: r"inference input 'SEED' data-type is 'FP32', but model 'ddpm' expects 'INT64'", "triton"),
    Bad("SEED-as-INT32", lambda m: [_seed(1, np.int32, "INT32"), _steps([STEPS])],
        lambda m: r"inference input 'SEED' data-type is 'INT32', but model 'ddpm' expects 'INT64'", "triton"),
    Bad("SEED-as-BYTES", lambda m: [("SEED", np.array([[b"1"]], np.object_), "BYTES"), _steps([STEPS])],
        lambda m: r"inference input 'SEED' data-type is 'BYTES', but model 'ddpm' expects 'INT64'", "triton"),
    Bad("STEPS-as-INT64", lambda m: [_seed(), _steps([STEPS], np.int64, "INT64")],
        lambda m: r"inference input 'STEPS' data-type is 'INT64', but model 'ddpm' expects 'INT32'", "triton"),
    Bad("CLASS_LABEL-as-FP32", lambda m: [_seed(), _steps([STEPS]), ("CLASS_LABEL", np.ones((1, 1), np.float32), "FP32")],
        lambda m: r"inference input 'CLASS_LABEL' data-type is 'FP32', but model 'ddpm' expects 'INT32'", "triton"),
    # wrong shape: Triton core names the input and the expected shape
    Bad("SEED-shape-n2", lambda m: [_seed(2, shape=(1, 2)), _steps([STEPS])],
        lambda m: r"unexpected shape for input 'SEED' for model 'ddpm'\. Expected \[-1,1\], got \[1,2\]", "triton"),
    Bad("STEPS-shape-n3", lambda m: [_seed(), _steps([STEPS] * 3, shape=(1, 3))],
        lambda m: r"unexpected shape for input 'STEPS' for model 'ddpm'\. Expected \[-1,1\], got \[1,3\]", "triton"),
    Bad("SEED-without-batch-dim", lambda m: [_seed(1, shape=(1,))],
        lambda m: r"unexpected shape for input 'SEED' for model 'ddpm'\. Expected \[-1,1\], got \[1\]", "triton"),
    Bad("batch-sizes-differ", lambda m: [_seed(2), _steps([STEPS])],
        lambda m: r"input '(SEED|STEPS)' batch size does not match other inputs for 'ddpm'", "triton"),
    # batch over max_batch_size: Triton core names the limit (not an input: the batch is every input's)
    Bad("batch-over-max", lambda m: [_seed(m + 1), _steps([STEPS] * (m + 1))],
        lambda m: rf"inference request batch-size must be <= {m} for 'ddpm'", "triton"),
    # empty batch: Triton core names SEED, in terms of bytes
    Bad("empty-batch", lambda m: [_seed(0)],
        lambda m: r"input byte size mismatch for input 'SEED' for model 'ddpm'\. Expected \d+, got 0", "triton"),
    Bad("unknown-input", lambda m: [_seed(), ("NOISE", np.ones((1, 1), np.float32), "FP32")],
        lambda m: r"unexpected inference input 'NOISE' for model 'ddpm'", "triton"),
    # what only our model can check (Triton lets an absent SEED through although it is not optional)
    Bad("SEED-missing", lambda m: [_steps([STEPS])],
        lambda m: r"^SEED is required: one INT64 seed per image, shape \[n, 1\]$", "ddpm"),
    Bad("STEPS-bad-in-a-batch", lambda m: [_seed(3), _steps([STEPS, STEPS, 0])],
        lambda m: r"^STEPS must be in \[1, 1000\], got 0 \(image 2\)$", "ddpm"),
    Bad("SAMPLER-not-UTF-8", lambda m: [_seed(), ("SAMPLER", np.array([[b"\xff\xfeddim"]], np.object_), "BYTES")],
        lambda m: r"^SAMPLER must be UTF-8 text, got b'\\xff\\xfeddim'$", "ddpm"),
    # an oversized value: the model rejects it and quotes only its start. (A body over the HTTP front's
    # limit never reaches Triton: tests/test_security.py.)
    Bad("SAMPLER-60MB", lambda m: [_seed(), ("SAMPLER", np.array([[b"x" * OVERSIZED]], np.object_), "BYTES")],
        lambda m: rf"^SAMPLER must be one of ddpm, ddim, got 'x{{40}}'\.\.\. \({OVERSIZED} characters\)$", "ddpm"),
]  # fmt: skip

EXPECTED_STATUS = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_input_is_rejected_by_name_and_the_server_stays_ready(server, bad, protocol):
    m = _max_batch_size(server)
    with pytest.raises(InferenceServerException) as err:
        _infer(server, bad.specs(m), protocol)
    message = err.value.message()
    assert _status_of(err.value, protocol) == EXPECTED_STATUS[protocol], message[:300]
    assert len(message) < 1000, f"{len(message)}-character message: {message[:200]}..."
    assert re.search(bad.message(m), message), message
    assert server.ready()


def test_good_requests_sent_with_bad_ones_are_all_answered(server):
    """48 good requests and every bad one above, all released at the same instant, over both protocols."""
    m = _max_batch_size(server)
    jobs: list[tuple[str, Bad | None, list[Spec], str]] = []
    for i in range(48):
        jobs.append((f"good-{i}", None, _good([9000 + i]), "grpc" if i % 2 else "http"))
    for i, bad in enumerate(BAD):
        jobs.append((bad.id, bad, bad.specs(m), "grpc" if i % 2 else "http"))
    start = threading.Barrier(len(jobs))

    def send(job):
        _, _, specs, protocol = job
        start.wait(timeout=60)
        try:
            return _infer(server, specs, protocol, timeout_s=180)
        except InferenceServerException as err:
            return err

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    good = [(job, r) for job, r in zip(jobs, results) if job[1] is None]
    bad = [(job, r) for job, r in zip(jobs, results) if job[1] is not None]
    failed = [(job[0], r.message()) for job, r in good if isinstance(r, InferenceServerException)]
    assert not failed, failed
    assert all(r.shape == (1, 28, 28, 1) and r.dtype == np.uint8 for _, r in good)
    assert len({r.tobytes() for _, r in good}) == 48  # 48 seeds, 48 different images
    for (name, spec, _, _), r in bad:
        assert isinstance(r, InferenceServerException) and re.search(spec.message(m), r.message()), (name, r)
    assert server.ready()


# ---- 2. sustained load ---------------------------------------------------------------------------


def test_short_soak_has_no_failures_and_bounded_memory(server, tmp_path):
    """benchmarks/soak.py's code for ~30 s at concurrency 1..8 on the session server."""
    report = soak(server, seconds=20, concurrency=(1, 2, 4, 8), steps=STEPS, work_dir=tmp_path,
                  command="pytest tests/test_reliability.py::test_short_soak_has_no_failures_and_bounded_memory")  # fmt: skip
    json_path, md_path = write_report(report, tmp_path, stem="soak")
    summary = md_path.read_text()
    assert report.failures == 0, summary
    assert [level.concurrency for level in report.levels] == [1, 2, 4, 8]
    assert all(level.runs >= 1 and 0 < level.p50_ms <= level.p99_ms for level in report.levels), summary
    assert report.requests >= 4 * 6, summary
    assert report.rss_after_mib <= report.rss_bound_mib == rss_bound(int(report.rss_before_mib * 2**20)) / 2**20, (
        summary
    )
    assert json.loads(json_path.read_text())["passed"] is True


# ---- 3. faults, each on a server of its own ------------------------------------------------------


def _stubs(server: TritonServer, model: str | None = None) -> list[Stub]:
    """Live triton_python_backend_stub processes (of `model`), as the watchdog sees them.

    While a model is reloaded its old and new stubs both live for a moment.
    """
    return [s for s in stubs(server.process.pid) if model is None or s.model == model]


def _pids(server: TritonServer, model: str) -> set[int]:
    return {s.pid for s in _stubs(server, model)}


@contextmanager
def _own_server(home: Path, tmp_path: Path, http_port: int = 0, grpc_port: int = 0, admin_key: str | None = None,
                models: tuple[str, ...] = ("ddpm", "unet_onnx_fp32")) -> Iterator[TritonServer]:  # fmt: skip
    """A server of this test only: explicit model control, `models` loaded, the watchdog on, a short exit timeout.

    Shared-memory regions that a killed stub leaves in /dev/shm are removed afterwards (stop()
    removes those of stubs the watchdog replaced; this also covers a test that failed earlier).
    """
    server = TritonServer(
        REPOSITORY, ServerFiles(home),
        http_port=http_port or free_port(), grpc_port=grpc_port or free_port(), metrics_port=free_port(),
        load_models=models, log_path=tmp_path / f"server-{time.monotonic_ns()}.log",
        extra_args=("--exit-timeout-secs=5",),  # a client's open HTTP connection holds the shutdown that long
        **({"admin_key": admin_key} if admin_key else {}),
    )  # fmt: skip
    regions: set[str] = set()
    server.start()
    try:
        server.wait_ready()
        regions |= {s.region for s in _stubs(server)}
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            regions |= {s.region for s in _stubs(server)}
        server.stop(timeout_s=30)
        for region in regions:
            Path("/dev/shm", region).unlink(missing_ok=True)


def _force_reload(server: TritonServer, model: str, protocol: str = "http") -> None:
    """Load `model` again with the admin key. An unchanged model would be a no-op; a changed parameter makes it real."""
    with _http(server) as client:
        config = client.get_model_config(model)
    config.setdefault("parameters", {})["reload_nonce"] = {"string_value": str(time.time_ns())}
    if protocol == "http":
        with _http(server, timeout_s=300) as client:
            client.load_model(model, headers={ADMIN_HEADER: server.admin_key}, config=json.dumps(config))
    else:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            client.load_model(model, headers={GRPC_ADMIN_HEADER: server.admin_key}, config=json.dumps(config),
                              client_timeout=300)  # fmt: skip


def _succeeded(server: TritonServer, model: str) -> int:
    with _http(server) as client:
        stats = client.get_inference_statistics(model)
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def _attempt(call: Callable[[], Any]) -> tuple[Any, float]:
    """(result or the exception, seconds it took)."""
    started = time.monotonic()
    try:
        return call(), time.monotonic() - started
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return err, time.monotonic() - started


_NOT_HEALTHY = "Stub process '{}' is not healthy."  # Triton 2.51's answer while a model's stub is dead
SERVES_AGAIN_WITHIN_S = 60  # seen: 8-9 s after the kill on 2 CPU cores, 7 s of it loading the new stub
UNET = "unet_onnx_fp32"


def _ddpm_request(server: TritonServer) -> np.ndarray:
    return _infer(server, _good([7]), timeout_s=60)


def _unet_request(server: TritonServer, n: int = 1) -> np.ndarray:
    """One call of the U-Net model itself: n noisy images at t = 500, label 0."""
    specs = [("X", np.zeros((n, 1, 28, 28), np.float32), "FP32"), ("T", np.full((n, 1), 500, np.float32), "FP32"),
             ("LABEL", np.zeros((n, 1), np.int32), "INT32")]  # fmt: skip
    return _infer(server, specs, timeout_s=60, model=UNET, output="EPS")


def _served_again(request: Callable[[], np.ndarray], since: float) -> float:
    """Send `request` until it is answered; seconds from `since` to that answer.

    While the model is down every request must still be answered (with an error) at once.
    """
    errors = []
    while True:
        result, took = _attempt(request)
        if isinstance(result, np.ndarray):
            return time.monotonic() - since
        assert isinstance(result, InferenceServerException), result
        assert took < 10, f"a request while the model was down took {took:.1f} s: {result.message()}"
        errors.append(result.message())
        if time.monotonic() - since > SERVES_AGAIN_WITHIN_S:
            raise AssertionError(f"not served again {SERVES_AGAIN_WITHIN_S} s after the kill; last: {errors[-3:]}")
        time.sleep(0.2)


def test_a_killed_stub_fails_its_requests_fast_and_the_watchdog_brings_the_model_back(triton_home, tmp_path):
    """No manual reload anywhere: the U-Net model's stub is killed while requests are executing and
    queued; the server stays up and the model serves again (`on_stub_death` absent: a reload).

    `ddpm`'s stub (a server restart) is the next test's.
    """
    with _own_server(triton_home, tmp_path) as server:
        assert server.watchdog is not None
        (unet,) = _stubs(server, UNET)
        (ddpm,) = _stubs(server, "ddpm")
        _wait_for(lambda: unet.pid in server.watchdog.seen_alive(), 10, "the watchdog to see the U-Net's stub")

        # Three streams of 32-image U-Net calls: one executing and more queued at any moment.
        sent: list[tuple[float, float, Any]] = []  # (sent, answered, images or error)
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                started = time.monotonic()
                result, _ = _attempt(lambda: _unet_request(server, 32))
                sent.append((started, time.monotonic(), result))

        threads = [threading.Thread(target=stream) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: sum(isinstance(r, np.ndarray) for _, _, r in sent) >= 3, 60, "U-Net calls to succeed")
            os.kill(unet.pid, signal.SIGKILL)
            killed = time.monotonic()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        in_flight = [(answered - killed, r) for started, answered, r in sent if started < killed < answered]
        assert in_flight, "no request was in flight at the kill"
        assert max(after for after, _ in in_flight) < 10, f"in flight at the kill, answered after {in_flight}"
        failed = [r for _, r in in_flight if isinstance(r, InferenceServerException)]
        assert failed, "no request in flight at the kill failed"
        for err in failed:
            assert (err.status(), err.message()) == ("StatusCode.INTERNAL", _NOT_HEALTHY.format(unet.instance))
        assert server.ready()

        _served_again(lambda: _unet_request(server), killed)
        (restart,) = server.watchdog.restarts
        assert (restart.model, restart.dead, restart.error) == (UNET, (unet,), None), restart
        assert _pids(server, UNET) - {unet.pid}, "no new U-Net stub"
        assert _pids(server, "ddpm") == {ddpm.pid}, "ddpm was restarted although its stub lives"
        assert Path("/dev/shm", unet.region).exists()  # Triton never frees the dead instance; stop() does
        assert server.server_restarts == []

        # Triton itself would wait out its exit timeout for the dead version, then exit 1.
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 15
    assert not Path("/dev/shm", unet.region).exists(), "the dead stub's region left in /dev/shm"


IN_FLIGHT_STEPS = 300  # four such images take about 25 s on 2 CPU cores: far from done at the kill
LIBRARY_STEPS = 20  # with the four above in every U-Net call: still stepping at the kill
CLIENT_DEADLINE_S = 120  # every client's own timeout: what a stranded request would end at
ERROR_WITHIN_S = 15  # the bound for an error to each request in flight at the kill; seen: well under 2 s


def _ended(call: Callable[[], Any]) -> tuple[Any, float]:
    """(result or the exception, time.monotonic() when it ended)."""
    result, _ = _attempt(call)
    return result, time.monotonic()


def _admitted(server: TritonServer) -> int:
    """Images `ddpm` has taken: counted when execute has handed a request to the step scheduler."""
    with _http(server) as client:
        return sum(int(s["inference_count"]) for s in client.get_inference_statistics("ddpm")["model_stats"])


def test_a_killed_ddpm_stub_fails_its_in_flight_requests_and_the_watchdog_restarts_the_server(
    triton_home, tmp_path, caplog
):
    """`ddpm`'s stub is killed while six requests step on it: four plain ones (gRPC and HTTP) and two
    of the project's client. Triton 2.51 would never answer them (a reload would not either: they
    would end at their clients' deadline); `ddpm`'s config says on_stub_death: restart_server, so
    the watchdog has `TritonServer` kill the process, closing their connections, and start it
    again on the same ports. The plain ones get an error within ERROR_WITHIN_S; the client library
    retries through the restart and gets the images it would have got."""
    with _own_server(triton_home, tmp_path) as server, caplog.at_level(logging.WARNING, "ddpm_triton.watchdog"):
        old_pid = server.process.pid
        old_stubs = {s.model: s for s in _stubs(server)}
        ddpm = old_stubs["ddpm"]
        _wait_for(lambda: ddpm.pid in server.watchdog.seen_alive(), 10, "the watchdog to see ddpm's stub")
        library = [
            DDPMClient(url, protocol, retries=8, backoff_s=0.5, timeout_s=CLIENT_DEADLINE_S)
            for url, protocol in ((server.grpc_url, "grpc"), (server.http_url, "http"))
        ]
        expected = library[0].generate(2, seed=40, steps=LIBRARY_STEPS)  # an image alone = the same seed in a batch
        admitted = _admitted(server)
        plain = [("grpc", 30), ("http", 31), ("grpc", 32), ("http", 33)]
        with ThreadPoolExecutor(len(plain) + len(library)) as pool:
            in_flight = [
                pool.submit(_ended, lambda p=p, s=s: _infer(server, _good([s], IN_FLIGHT_STEPS), p, CLIENT_DEADLINE_S))
                for p, s in plain
            ]
            through = [pool.submit(_ended, lambda c=c, i=i: c.generate(1, seed=40 + i, steps=LIBRARY_STEPS))
                       for i, c in enumerate(library)]  # fmt: skip
            _wait_for(lambda: _admitted(server) == admitted + 6, 30, "ddpm to take all six requests")
            assert not any(f.done() for f in in_flight + through), "a request ended before the kill"
            os.kill(ddpm.pid, signal.SIGKILL)
            killed = time.monotonic()
            errors = [(protocol, *f.result(timeout=CLIENT_DEADLINE_S)) for (protocol, _), f in zip(plain, in_flight)]
            served_after = _served_again(lambda: _ddpm_request(server), killed)
            images = [f.result(timeout=CLIENT_DEADLINE_S) for f in through]
        for client in library:
            client.close()

        for protocol, error, ended in errors:
            assert ended - killed < ERROR_WITHIN_S, f"{protocol} request answered {ended - killed:.1f} s after the kill"
            if protocol == "grpc":  # the connection closed under it
                assert isinstance(error, InferenceServerException) and error.status() == "StatusCode.UNAVAILABLE", error
            else:
                assert isinstance(error, HTTPConnectionClosed), repr(error)
        for i, (result, _) in enumerate(images):
            assert isinstance(result, np.ndarray), f"the client library failed through the restart: {result!r}"
            assert result.tobytes() == expected[i : i + 1].tobytes()

        (relaunch,) = server.server_restarts
        assert (relaunch.cause.model, relaunch.cause.dead, relaunch.old_pid, relaunch.error) == (
            "ddpm", (ddpm,), old_pid, None), relaunch  # fmt: skip
        assert relaunch.new_pid == server.process.pid != old_pid
        assert server.watchdog is not None and server.watchdog.server_pid == server.process.pid
        assert server.watchdog.restarts == [], "a model was reloaded as well"
        assert not any(alive(s.pid) for s in old_stubs.values()), "a stub of the old server lives on"
        assert not any(Path("/dev/shm", s.region).exists() for s in old_stubs.values()), "old regions left in /dev/shm"
        died = rf"stub process of model 'ddpm' died \(instance {ddpm.instance} pid {ddpm.pid}\); restarting"
        assert re.search(died, caplog.text) and "a reload would not do" in caplog.text, caplog.text
        print(f"in flight at the kill: errors after {', '.join(f'{e - killed:.2f}' for _, _, e in errors)} s; "
              f"server restarted in {relaunch.seconds:.1f} s; ddpm served again {served_after:.1f} s after the kill")


ENTRYPOINT = ROOT / "docker" / "tritonserver-entrypoint.sh"


def test_the_container_entrypoint_runs_the_watchdog_beside_tritonserver(triton_home, tmp_path):
    """docker/tritonserver-entrypoint.sh as the NVIDIA image runs it (TRITON_ADMIN_KEY unset, so with
    a key it made up), on the pip server. Its watchdog reloads the U-Net whose stub was killed; for
    `ddpm` (on_stub_death: restart_server) it ends tritonserver, which fails the request in flight
    at once, and the script exits with tritonserver's status. Docker's restart policy starting the
    container again is the one step not run here (no Docker engine)."""
    files = ServerFiles(triton_home)
    env = files.env()
    env.pop("TRITON_ADMIN_KEY", None)
    env.pop("WATCHDOG_INTERVAL", None)
    env["PATH"] = os.pathsep.join([str(files.tritonserver.parent.resolve()), env["PATH"]])  # python3: this venv's
    handle = TritonServer(REPOSITORY, files, http_port=free_port(), grpc_port=free_port(), watchdog_interval_s=0)
    command = [
        "bash", str(ENTRYPOINT), f"--model-repository={REPOSITORY}", f"--backend-directory={files.backends.resolve()}",
        "--http-address=127.0.0.1", f"--http-port={handle.http_port}", "--grpc-address=127.0.0.1",
        f"--grpc-port={handle.grpc_port}", "--allow-metrics=false", "--model-control-mode=explicit",
        "--load-model=ddpm", f"--load-model={UNET}", "--exit-timeout-secs=5",
    ]  # fmt: skip
    log = tmp_path / "entrypoint.log"
    with open(log, "wb") as out:
        handle.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    regions: set[str] = set()
    try:
        handle.wait_ready()
        children = process_tree(handle.process.pid)[1:]
        (triton,) = [pid for pid in children if _cmdline(pid).split(b"\0")[0].endswith(b"tritonserver")]
        watchers = [pid for pid in children if b"ddpm_triton.watchdog" in _cmdline(pid)]
        assert len(watchers) == 1, log.read_text()[-2000:]
        assert f"--server-pid\0{triton}\0".encode() in _cmdline(watchers[0]), "the watchdog watches another pid"
        live = {s.model: s for s in stubs(triton)}
        regions |= {s.region for s in live.values()}

        os.kill(live[UNET].pid, signal.SIGKILL)  # the default policy: a reload
        _served_again(lambda: _unet_request(handle), time.monotonic())
        _wait_for(lambda: f"model '{UNET}' serves again" in log.read_text(), 30, "the watchdog's line")
        regions |= {s.region for s in stubs(triton)}

        with ThreadPoolExecutor(1) as pool:  # ddpm: tritonserver is ended under a request in flight
            long_request = _good([7], IN_FLIGHT_STEPS)
            request = pool.submit(_ended, lambda: _infer(handle, long_request, timeout_s=CLIENT_DEADLINE_S))
            _wait_for(lambda: _admitted(handle) == 1, 30, "ddpm to take the request")
            os.kill(live["ddpm"].pid, signal.SIGKILL)
            killed = time.monotonic()
            error, ended = request.result(timeout=CLIENT_DEADLINE_S)
        assert ended - killed < ERROR_WITHIN_S, f"answered {ended - killed:.1f} s after the kill"
        assert isinstance(error, InferenceServerException) and error.status() == "StatusCode.UNAVAILABLE", error
        assert handle.process.wait(ERROR_WITHIN_S) == 128 + signal.SIGKILL, "the script must exit with tritonserver"
        assert not any(alive(pid) for pid in watchers), "the script exited before its watchdog"
        text = log.read_text()
        assert "TRITON_ADMIN_KEY is not set" in text
        # "(instance <name> pid N)" when the watchdog had seen the stub alive, else "(0 of 1 running)"
        for model, then in ((UNET, "reloading"), ("ddpm", "restarting tritonserver")):
            died = rf"stub process of model '{model}' died \((instance {model}_0_0 pid \d+|0 of 1 running)\); {then}"
            assert re.search(died, text), text[-3000:]
        assert f"ended tritonserver pid {triton}" in text, text[-2000:]
        assert "tritonserver exited with status 137" in text, text[-2000:]
        assert not [r for r in regions if Path("/dev/shm", r).exists()], "the watchdog left the stubs' shared memory"
    finally:
        if handle.process.poll() is None:
            handle.process.send_signal(signal.SIGINT)  # the script passes it on to tritonserver
        try:
            handle.process.wait(60)
        except subprocess.TimeoutExpired:
            for pid in reversed(process_tree(handle.process.pid)):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            handle.process.wait()
        for region in regions:
            Path("/dev/shm", region).unlink(missing_ok=True)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_reloading_models_under_load_fails_no_request(triton_home, tmp_path):
    with _own_server(triton_home, tmp_path) as server:
        before = {m: _pids(server, m) for m in ("ddpm", "unet_onnx_fp32")}
        done: list[tuple[float, float]] = []  # (sent, answered) of every good answer
        errors: list[str] = []
        stop = threading.Event()

        def stream(protocol: str, first_seed: int) -> None:
            seed = first_seed
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    _infer(server, _good([seed], steps=3), protocol, timeout_s=120)
                    done.append((sent, time.monotonic()))
                except InferenceServerException as err:
                    errors.append(f"{protocol}: {err.status()} {err.message()}")
                seed += 2

        threads = [threading.Thread(target=stream, args=(p, i)) for i, p in enumerate(("grpc", "http"))]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: len(done) >= 4, 60, "the stream of requests to get going")
            reloads = []
            for model, protocol in (("ddpm", "http"), ("unet_onnx_fp32", "grpc")):
                started = time.monotonic()
                _force_reload(server, model, protocol)
                reloads.append((model, started, time.monotonic()))
            count = len(done)
            _wait_for(lambda: len(done) >= count + 2, 60, "requests after the reloads")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        assert not errors, errors
        for model, started, finished in reloads:
            assert sum(started <= answered <= finished for _, answered in done) >= 1, (
                f"nothing served during the {model} reload"
            )
        for model, pids in before.items():
            assert _pids(server, model) - pids, f"{model} was not really reloaded (no new stub)"
        assert server.watchdog is not None and server.watchdog.restarts == [], "the watchdog took a reload for a death"


def test_client_retries_through_a_server_restart(triton_home, tmp_path):
    """The same client objects, before a stop, while the server is down, and after it is back on the same ports."""
    ports = {"http_port": free_port(), "grpc_port": free_port()}
    key = "reliability-test-key"
    grpc_client = DDPMClient(f"127.0.0.1:{ports['grpc_port']}", "grpc", retries=8, backoff_s=0.5, timeout_s=60)
    http_client = DDPMClient(f"127.0.0.1:{ports['http_port']}", "http", retries=8, backoff_s=0.5, timeout_s=60)
    with grpc_client, http_client:
        with _own_server(triton_home, tmp_path, admin_key=key, **ports):
            expected = grpc_client.generate(1, seed=5, steps=STEPS)
            assert http_client.generate(1, seed=5, steps=STEPS).tobytes() == expected.tobytes()
        with ThreadPoolExecutor(2) as pool:
            calls = [
                pool.submit(_attempt, lambda c=c: c.generate(1, seed=5, steps=STEPS))
                for c in (grpc_client, http_client)
            ]
            time.sleep(1.0)  # both are failing and backing off now
            assert not any(call.done() for call in calls), [call.result() for call in calls if call.done()]
            down_since = time.monotonic()
            with _own_server(triton_home, tmp_path, admin_key=key, **ports):
                back_after = time.monotonic() - down_since
                results = [call.result(timeout=180) for call in calls]
    for (images, took), protocol in zip(results, ("grpc", "http")):
        assert isinstance(images, np.ndarray), f"{protocol}: {images!r}"
        assert images.tobytes() == expected.tobytes()
        assert took > back_after, (
            f"{protocol} answered in {took:.1f} s, before the server was back ({back_after:.1f} s)"
        )
