"""`ddpm-triton bench` on a CPU: the seconds-long smoke version of the GPU benchmark."""

import json

import pytest
from PIL import Image

from ddpm_triton.cli import main

pytestmark = pytest.mark.server


def test_bench_smoke_writes_the_result_schema(tmp_path, triton_home):
    main(["bench", "--preset", "tiny", "--device", "cpu", "--steps", "2", "--batches", "1,2", "--concurrency", "1,2",
          "--long-steps", "3", "--long-batch", "2", "--peer-batch", "1", "--peers", "diffusers-fp32-eager",
          "--repeats", "1", "--stability", "500", "--out", str(tmp_path), "--home", str(triton_home)])  # fmt: skip
    (result,) = tmp_path.glob("*.json")
    record = json.loads(result.read_text())
    assert {"device", "date", "commit", "model", "rows", "server_host_memory_mib"} <= record.keys()
    rows = record["rows"]
    memory = record["server_host_memory_mib"]  # tritonserver and its stubs: after load, after each case through it
    assert memory["after_load"] > 0 and len(memory["after_each_case"]) == sum(r["via_triton"] for r in rows)
    assert all(m > 0 for m in memory["after_each_case"])
    seen = {(r["system"], r["via_triton"], r["batch"], r["concurrency"], r["steps"], r["sampler"]) for r in rows}
    assert seen == {
        ("project", False, 1, 1, 2, "ddim"), ("project", False, 2, 1, 2, "ddim"), ("project", False, 2, 1, 3, "ddpm"),
        ("diffusers-fp32-eager", False, 2, 1, 2, "ddim"), ("diffusers-fp32-eager", False, 1, 1, 3, "ddpm"),
        ("project", True, 1, 1, 2, "ddim"), ("project", True, 2, 1, 2, "ddim"), ("project", True, 1, 2, 2, "ddim"),
        ("project", True, 2, 1, 3, "ddpm"),
    }  # fmt: skip
    for row in rows:
        assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        if row["via_triton"]:  # read from ddpm's step counters: at most the request batch times the concurrency
            assert 1 <= row["mean_step_batch"] <= row["batch"] * row["concurrency"]
        else:
            assert row["mean_step_batch"] is None
        assert {"system", "precision", "format", "sampler", "command"} <= row.keys()
        assert row["sm_clock_mhz"] is row["gpu_power_w"] is row["power_capped"] is None  # no GPU to sample here
    markdown = result.with_suffix(".md").read_text()
    assert markdown.count("| project |") == 7 and markdown.count("| diffusers-fp32-eager |") == 2
    with Image.open(result.with_suffix(".png")) as plot:
        assert plot.size[0] > 500 and plot.size[1] > 300
