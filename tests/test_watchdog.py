"""The watchdog's arithmetic, without a server: how many stubs a config asks for, and its backoff.

What it does against the real tritonserver (a killed stub brought back, in `TritonServer`, in
`ddpm-triton serve` and in the container's entrypoint) is tested in test_reliability.py and
test_serve.py.
"""

from __future__ import annotations

import time

import pytest

from ddpm_triton.watchdog import Watchdog, expected_stubs


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
