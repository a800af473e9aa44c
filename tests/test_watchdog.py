"""The watchdog without a server: how many stubs a config asks for, its backoff, and which way it
mends a model (reload, or the server restart a model's `on_stub_death` asks for).

What it does against the real tritonserver (a killed stub brought back, in `TritonServer`, in
`ddpm-triton serve` and in the container's entrypoint; the server restarted for `ddpm`) is tested
in test_reliability.py and test_serve.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ddpm_triton.watchdog import (
    RELOAD_MODEL,
    RESTART_SERVER,
    ServerRestart,
    Watchdog,
    end_server,
    expected_stubs,
    stub_death_policy,
)


@pytest.mark.parametrize(
    ("config", "stubs"),
    [
        # as GET /v2/models/<m>/config returns them: Triton fills in the group's name, kind and GPUs
        ({"backend": "python", "instance_group": [{"name": "ddpm_0", "kind": "KIND_CPU", "count": 1, "gpus": []}]}, 1),
        ({"backend": "python", "instance_group": [{"kind": "KIND_CPU", "count": 3}]}, 3),
        ({"backend": "python", "instance_group": [{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}]}, 4),
        ({"backend": "python", "instance_group": [{"kind": "KIND_GPU", "count": 1, "gpus": [0]},
                                                  {"kind": "KIND_CPU", "count": 2}]}, 3),  # fmt: skip
        ({"backend": "python", "instance_group": [{"kind": "KIND_MODEL", "count": 1, "gpus": [0, 1]}]}, 1),
        ({"backend": "python"}, 1),
        # native backends (NVIDIA's container) have no stub process to watch
        ({"backend": "tensorrt", "instance_group": [{"kind": "KIND_GPU", "count": 1, "gpus": [0]}]}, 0),
        ({"backend": "onnxruntime", "instance_group": [{"kind": "KIND_CPU", "count": 2}]}, 0),
    ],
)
def test_expected_stubs_is_one_per_instance_of_a_python_model(config, stubs):
    assert expected_stubs(config) == stubs


def test_a_model_that_keeps_dying_is_reloaded_with_growing_pauses():
    watchdog = Watchdog("127.0.0.1:1", "key", server_pid=1, backoff_s=5, max_backoff_s=30, backoff_window_s=600)
    now = time.monotonic()
    assert watchdog._due("m")  # a first death: at once
    for ago, due in (([4], False), ([6], True), ([20, 9], False), ([20, 11], True), ([50, 40, 19], False),
                     ([50, 40, 21], True), ([90, 80, 70, 60, 50, 29], False), ([90, 80, 70, 60, 50, 31], True),
                     ([700, 4], False), ([700, 601, 6], True)):  # fmt: skip
        # pauses 5, 10, 20 s, then the 30 s cap; restarts older than the window no longer count
        watchdog._attempts["m"] = [now - a for a in ago]
        assert watchdog._due("m") is due, (ago, due)


def test_an_interval_of_zero_is_no_watchdog():
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        Watchdog("127.0.0.1:1", "key", server_pid=1, interval_s=0)


def _config(policy: str | None) -> dict:
    """A one-instance Python model's config as Triton returns it, with on_stub_death if given."""
    config = {"backend": "python", "instance_group": [{"kind": "KIND_CPU", "count": 1}], "parameters": {}}
    if policy is not None:
        config["parameters"]["on_stub_death"] = {"string_value": policy}
    return config


@pytest.mark.parametrize(
    ("config", "policy"),
    [
        ({"backend": "python"}, RELOAD_MODEL),  # no parameters at all: today's behaviour
        (_config(None), RELOAD_MODEL),
        (_config("reload_model"), RELOAD_MODEL),
        (_config("restart_server"), RESTART_SERVER),
    ],
)
def test_the_policy_is_the_configs_on_stub_death_parameter(config, policy):
    assert stub_death_policy(config) == policy


def test_an_unknown_policy_is_refused_by_name():
    with pytest.raises(ValueError, match=r"on_stub_death must be one of reload_model, restart_server, got 'reboot'"):
        stub_death_policy(_config("reboot"))


def _watchdog(callback=None) -> Watchdog:
    """A watchdog of a server that does not exist (port 1 refuses): a reload it tries fails at once.
    Its server pid is this process, which has no stub children."""
    return Watchdog("127.0.0.1:1", "key", server_pid=os.getpid(), restart_server=callback)


def test_a_model_that_asks_for_it_gets_the_server_restarted_instead_of_any_reload(caplog):
    asked: list[ServerRestart] = []
    watchdog = _watchdog(asked.append)
    with caplog.at_level(logging.WARNING, logger="ddpm_triton.watchdog"):
        made = watchdog._mend({"unet": _config(None), "ddpm": _config("restart_server")}, {})
    assert made == [] and watchdog.restarts == [], "reloaded although the server restarts"
    assert [(e.model, e.dead, e.server_pid) for e in asked] == [("ddpm", (), os.getpid())]
    assert watchdog.server_restarts == asked
    assert watchdog._stop.is_set(), "the watchdog of a server that goes away must stop"
    assert "restarting tritonserver" in caplog.text and "a reload would not do" in caplog.text, caplog.text


def test_without_a_callback_it_reloads_and_says_the_in_flight_requests_stay_unanswered(caplog):
    watchdog = _watchdog()
    with caplog.at_level(logging.WARNING, logger="ddpm_triton.watchdog"):
        (made,) = watchdog._mend({"ddpm": _config("restart_server")}, {})
    assert made.model == "ddpm" and made.error is not None, made  # tried: nothing listens on port 1
    assert watchdog.server_restarts == [] and not watchdog._stop.is_set()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("stay unanswered until their clients' deadlines" in e for e in errors), errors


@pytest.mark.parametrize("policy", [None, "reload_model", "reboot"])
def test_other_models_are_reloaded_even_with_a_callback(policy, caplog):
    asked: list[ServerRestart] = []
    watchdog = _watchdog(asked.append)
    with caplog.at_level(logging.WARNING, logger="ddpm_triton.watchdog"):
        (made,) = watchdog._mend({"unet": _config(policy)}, {})
    assert made.model == "unet" and asked == []
    if policy == "reboot":
        assert "on_stub_death must be one of" in caplog.text


def test_end_server_kills_the_server_and_removes_its_shared_memory():
    """The command line's callback (the container's), on a real process standing in for tritonserver."""
    region = f"ddpm-triton-test-{uuid.uuid4()}"
    Path("/dev/shm", region).write_bytes(b"x")
    server = subprocess.Popen(["sleep", "60"])
    try:
        end_server(ServerRestart("ddpm", (), server.pid, frozenset({region})))
        assert server.wait(5) == -9
        assert not Path("/dev/shm", region).exists()
    finally:
        server.kill()
        Path("/dev/shm", region).unlink(missing_ok=True)
