"""The bench PNG (src/ddpm_triton/benchplot.py), drawn from real measurements."""

import json
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from ddpm_triton.benchplot import DPI, FIGSIZE, plot_results
from ddpm_triton.peers import measure_peer
from ddpm_triton.provenance import describe_device, git_commit

ROOT = Path(__file__).resolve().parents[1]
H100_RESULT = ROOT / "benchmarks" / "results" / "2026-11-23-nvidia-h100-80gb-hbm3.json"
ROW_KEYS = ("system", "via_triton", "precision", "format", "batch", "concurrency", "steps", "sampler",
            "images_per_s", "p50_ms", "p99_ms", "peak_gpu_mb")  # fmt: skip


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
        image.verify()
    with Image.open(path) as image:  # decodes, and is not a blank canvas
        darkest, lightest = image.convert("L").getextrema()
        assert darkest < 64 and lightest > 192


def test_plot_from_tiny_peer_measurements(tmp_path):
    command = "tests/test_benchplot.py: measure_peer(..., preset='tiny')"
    rows = []
    for sampler, steps in [("ddpm", 3), ("ddim", 2)]:
        for batch in (1, 2):
            measured = measure_peer("diffusers-fp32-eager", batch, steps, "cpu", 2, preset="tiny", sampler=sampler,
                                    warmup_calls=1)  # fmt: skip
            rows.append({**{k: measured[k] for k in ROW_KEYS}, "command": command})
    record = {"device": describe_device("cpu"), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "commit": git_commit(), "model": "tiny diffusers UNet2DModel (random weights)", "rows": rows}  # fmt: skip
    source = tmp_path / "result.json"
    source.write_text(json.dumps(record))
    png = plot_results(source, tmp_path / "plots" / "result.png")
    assert png == tmp_path / "plots" / "result.png"
    assert_png(png)


def test_plot_of_the_committed_h100_baseline(tmp_path):
    """A real result with via-Triton rows draws the latency panel too (and a point measured twice)."""
    assert_png(plot_results(H100_RESULT, tmp_path / "h100.png"))
