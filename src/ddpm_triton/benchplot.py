"""The PNG of a `ddpm-triton bench` result file: images/s against batch, latency against concurrency.

    python -m ddpm_triton.benchplot benchmarks/results/<date>-<device>.json [out.png]

Left panel: every row measured at concurrency 1, images/s against batch (log2 x, log y), one line per
(system, via_triton, format, precision, steps, sampler). Right panel: the via-Triton single-image rows, p50
latency of a request against the number of concurrent clients (log2 x, log y), p99 as the upper error bar, one
line per (system, format, precision, steps, sampler). A point measured twice (the batch-1, concurrency-1 row of
both sweeps) is drawn at the median of its images/s or p50 and the largest p99. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

FIGSIZE = (15.0, 7.0)  # inches
DPI = 100  # so the PNG is 1500 x 700 pixels


def _label(row: dict[str, Any], with_path: bool = True) -> str:
    path = ("via Triton" if row["via_triton"] else "in-process") if with_path else ""
    parts = [row["system"], path, f"{row['format']} {row['precision']}", f"{row['steps']} {row['sampler']} steps"]
    return " · ".join(p for p in parts if p)


def _group(rows: list[dict[str, Any]], key: tuple[str, ...]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in key)].append(row)
    return dict(sorted(groups.items(), key=lambda item: tuple(str(v) for v in item[0])))


def _log2_x(ax: Any, values: list[int]) -> None:
    """log2 x axis with a labelled tick at each measured value."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted(set(values))
    ax.set_xticks(ticks, [str(v) for v in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 2, ticks[0] * 2)


def _log_y(ax: Any) -> None:
    """log y axis labelled in plain numbers (minor ticks too where the axis spans few decades)."""
    from matplotlib.ticker import LogFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _per_x(members: list[dict[str, Any]], x: str) -> list[list[dict[str, Any]]]:
    """Rows of one line grouped by their x value, in increasing x (a result file may measure a point twice)."""
    by_x: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in members:
        by_x[row[x]].append(row)
    return [by_x[k] for k in sorted(by_x)]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _finish_axes(ax: Any, xs: list[int], xlabel: str, ylabel: str, legend_title: str) -> None:
    """Log axes, grid, labels and a legend below the panel."""
    _log2_x(ax, xs)
    _log_y(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize="small", ncol=1, title=legend_title,
              title_fontsize="small")  # fmt: skip


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_results(json_path: str | Path, png_path: str | Path) -> Path:
    """Draw the two panels of the bench result file `json_path` into the PNG `png_path`; returns `png_path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    record = json.loads(Path(json_path).read_text())
    rows: list[dict[str, Any]] = record["rows"]
    png_path = Path(png_path)

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    throughput_ax, latency_ax = fig.subplots(1, 2)
    fig.suptitle(
        f"{record.get('model', 'model ?')} on {record.get('device', 'device ?')}\n"
        f"{record.get('date', 'date ?')} · commit {record.get('commit', '?')}",
        fontsize=11,
    )

    # Left: images/s against batch, every path at concurrency 1.
    batch_rows = [r for r in rows if r.get("concurrency", 1) == 1]
    groups = _group(batch_rows, ("system", "via_triton", "format", "precision", "steps", "sampler"))
    for key, members in groups.items():
        points = _per_x(members, "batch")
        throughput_ax.plot(
            [p[0]["batch"] for p in points], [_median([r["images_per_s"] for r in p]) for p in points],
            marker="o" if key[1] else "s", linestyle="-" if key[1] else "--", label=_label(members[0]),
        )  # fmt: skip
    if groups:
        _finish_axes(throughput_ax, [r["batch"] for r in batch_rows], "batch (images per request / pipeline call)",
                     "images/s", "solid: via Triton · dashed: in-process")  # fmt: skip
    else:
        _no_data(throughput_ax, "no rows at concurrency 1")
    throughput_ax.set_title("Throughput against batch (concurrency 1)", fontsize=10)

    # Right: latency of one image against concurrent clients, through the server.
    single = [r for r in rows if r.get("via_triton") and r["batch"] == 1]
    groups = _group(single, ("system", "format", "precision", "steps", "sampler"))
    for members in groups.values():
        points = _per_x(members, "concurrency")
        p50 = [_median([r["p50_ms"] for r in p]) for p in points]
        upper = [max(max(r["p99_ms"] for r in p) - median, 0.0) for p, median in zip(points, p50)]
        concurrency = [p[0]["concurrency"] for p in points]
        latency_ax.errorbar(concurrency, p50, yerr=[[0.0] * len(p50), upper], marker="o", capsize=4,
                            label=_label(members[0], with_path=False))  # fmt: skip
        for x, y in zip(concurrency, p50):
            latency_ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(-5, 5), ha="right",
                                fontsize="x-small")  # fmt: skip
    if groups:
        _finish_axes(latency_ax, [r["concurrency"] for r in single], "concurrent clients, one image per request",
                     "latency per request, ms", "marker: p50 · bar up to p99")  # fmt: skip
    else:
        _no_data(latency_ax, "no via-Triton single-image rows in this result file")
    latency_ax.set_title("Latency against concurrency (via Triton, batch 1)", fontsize=10)

    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, format="png", dpi=DPI)
    return png_path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m ddpm_triton.benchplot RESULT.json [OUT.png]", file=sys.stderr)
        return 2
    source = Path(args[0])
    print(plot_results(source, Path(args[1]) if len(args) == 2 else source.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
