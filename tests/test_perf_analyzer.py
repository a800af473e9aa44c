"""The real perf_analyzer against the real server's `ddpm` model, for a few seconds."""

import pytest

from ddpm_triton.perf import parse_csv, run_perf_analyzer, write_input_data

pytestmark = pytest.mark.server


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_ddpm(server, tmp_path, protocol):
    data = write_input_data(tmp_path / "input.json", seeds=16, STEPS=2)
    rows = run_perf_analyzer(
        server, data, concurrency=[1, 2], protocol=protocol, requests_per_window=6, stability_percent=500
    )
    assert [r.concurrency for r in rows] == [1, 2]
    for row in rows:
        assert row.inferences_per_s > 0
        assert 0 < row.p50_ms <= row.p99_ms
    assert parse_csv(tmp_path / "input.csv") == rows


def test_input_data_refuses_unknown_inputs(tmp_path):
    with pytest.raises(ValueError, match="NOISE is not a ddpm input"):
        write_input_data(tmp_path / "bad.json", NOISE=1)
