"""`ddpm-triton bench` on a CPU: the seconds-long smoke version of the GPU benchmark."""

import json

import pytest

from ddpm_triton.cli import main

pytestmark = pytest.mark.server


def test_bench_smoke_writes_the_result_schema(tmp_path, triton_home):
    main(["bench", "--preset", "tiny", "--device", "cpu", "--steps", "2", "--batches", "1,2", "--concurrency", "1,2",
          "--repeats", "1", "--stability", "500", "--out", str(tmp_path), "--home", str(triton_home)])  # fmt: skip
    (result,) = tmp_path.glob("*.json")
    record = json.loads(result.read_text())
    assert {"device", "date", "commit", "model", "rows"} <= record.keys()
    rows = record["rows"]
    assert {(r["via_triton"], r["batch"], r["concurrency"]) for r in rows} == {
        (False, 1, 1), (False, 2, 1), (True, 1, 1), (True, 2, 1), (True, 1, 2),
    }  # fmt: skip
    for row in rows:
        assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["steps"] == 2
        assert {"system", "precision", "format", "sampler", "command"} <= row.keys()
    assert result.with_suffix(".md").read_text().count("| project |") == len(rows)
