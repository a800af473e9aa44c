"""benchmarks/profile_serving.py's work on a CPU: the step counters beside perf_analyzer, and the py-spy summary."""

import pytest

from ddpm_triton.profiling import profile, summarize_profile


def test_summary_ranks_each_threads_functions_by_inclusive_samples(tmp_path):
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (1): worker;run (/x/a.py:1);step (/x/a.py:5);wait (/y/b.py:9) 6\n"
        "thread (1): worker;run (/x/a.py:1);admit (/x/a.py:7) 2\n"
        "thread (2): MainThread;execute (/x/m.py:3) 1\n"
        "not a sample line\n"
    )
    lines = summarize_profile(raw).splitlines()
    assert lines[0] == "thread (1): worker: 8 samples"
    assert lines[1:5] == ["  100.0%  run (a.py:1)", "   75.0%  step (a.py:5)", "   75.0%  wait (b.py:9)", "   25.0%  admit (a.py:7)"]
    assert lines[5:] == ["thread (2): MainThread: 1 samples", "  100.0%  execute (m.py:3)"]


@pytest.mark.server
def test_profile_reports_each_case_with_the_step_batch_ddpm_ran(tmp_path, triton_home):
    record = profile([(2, 1), (1, 2)], gpu=False, preset="tiny", steps=2, precision="fp32", stability_percent=500,
                     py_spy_s=0, home=triton_home, out=tmp_path, command="test")  # fmt: skip
    assert {"device", "date", "commit", "command", "model", "steps", "server_load_s", "rows"} <= record.keys()
    assert [(r["batch"], r["concurrency"]) for r in record["rows"]] == [(2, 1), (1, 2)]
    for row in record["rows"]:
        assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["unet_calls_per_s"] > 0
        assert 1 <= row["mean_step_batch"] <= 2 and row["gpu_utilization_percent"] is None
    assert record["rows"][0]["mean_step_batch"] == 2  # one 2-image request at a time: every call takes both
