"""Sample quality, in-process: what the shipped classifier says about generated digits.

Two measurements, both judged by `ddpm_triton.classifier` (the shipped MNIST CNN):

- a guidance x steps grid: class-conditional accuracy (does a sample asked for a "7" read as a 7)
  and the classifier Frechet distance of the samples to real digits, per (guidance scale, steps);
- a precision table: the same numbers for every exported artifact (ONNX fp32/fp16/int8,
  TorchScript fp32/fp16; TensorRT where it runs), plus how far each artifact's images are from the
  PyTorch fp32 images of the same seeds, in 0-255 levels, and how often the classifier reads the
  same class in both.

Every sample is drawn by `Pipeline`, i.e. `sampling.denoise` driven by `sampling.run`: the loop the
Triton `ddpm` model runs, with the U-Net call answered by the PyTorch module or by the artifact's
`runners.load_runner` runner (the code the server's U-Net models run). DDIM with eta = 0 is
deterministic, so image differences are the artifact's error alone.

Image i of a set of n has class i % classes and seed `seed + i`: every prefix of a set is
class-balanced, and a smaller set (a grid cell, a slow artifact's row) is the prefix of a larger
one, so its images are the same images.

The Frechet distance is on the classifier's 128-d penultimate features: a "classifier Frechet
distance", NOT the Inception FID of the literature. With a few hundred images in 128 dimensions it
is dominated by set-size bias and varies a lot with the particular set, so each value is printed
beside what sets of real held-out digits of the same size score against the same reference (mean
and range over several draws; see `Judge`). It also rewards low spread: a less diverse generated
set can score below real digits. Read it next to the accuracy, and only against numbers of the
same table.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import SUPPORTED, Variant
from .classifier import DEFAULT_PATH as CLASSIFIER_PATH
from .classifier import VAL_SIZE, DigitClassifier, classifier_metrics, frechet_distance, load_classifier
from .config import ModelConfig
from .data import load_idx
from .pipeline import Pipeline
from .runners import TensorRTUnavailable, import_tensorrt, load_runner

PYTORCH = "pytorch_fp32"
LIVE = {"pytorch_fp16": "fp16", "pytorch_fp8": "fp8"}
"""The checkpoint's weights run by PyTorch in a lower compute precision, as the GPU server runs them."""
VARIANTS = (PYTORCH, *LIVE, *(f"{fmt}_{p}" for fmt, precisions in SUPPORTED.items() for p in precisions))
"""Every source of eps this module can sample with: the PyTorch module, the same weights in lower
precisions, then each artifact kind."""

TITLES = {"pytorch": "PyTorch", "onnx": "ONNX", "torchscript": "TorchScript", "tensorrt": "TensorRT"}

REFERENCE_SIZE = 500
"""Real reference digits: the last 500 of the MNIST test set (the classifier never trained on them)."""

REAL_DRAWS = 8
"""Random real sets per size: a distance estimated from a few hundred images varies a lot with the set."""

MIN_FRECHET = 50
"""Below this many images a 128-d Frechet distance says nothing; smaller sets get accuracy only."""

CPU_LIMITS = {"torchscript_fp16": 10}
"""Images per row on a CPU where the full set would take hours: half-precision TorchScript runs
through emulated fp16 kernels there (about 25x slower than fp32 on AVX2 cores)."""
LIMIT_REASONS = {"torchscript_fp16": "fp16 TorchScript runs emulated half-precision kernels on a CPU, ~25x slower"}

FRECHET_LABEL = "classifier Frechet distance (not Inception FID)"


def title(name: str) -> str:
    """'onnx_int8' -> 'ONNX int8'."""
    fmt, precision = name.split("_")
    return f"{TITLES[fmt]} {precision}"


def balanced_labels(n: int, classes: int) -> np.ndarray:
    """Class i % classes for image i: every prefix of the set is as balanced as it can be."""
    return np.arange(n, dtype=np.int64) % classes


# ---- judging -------------------------------------------------------------------------------------


class Judge:
    """The classifier plus real digits: accuracy of a generated set and its distance to real digits.

    `real` are MNIST test images in file order; their last VAL_SIZE (1,000) are the classifier's
    held-out digits. The reference is the last REFERENCE_SIZE (500) of them. What a set of n real
    digits scores is measured on REAL_DRAWS random n-subsets of the other held-out digits, against
    the same reference: the value to read a generated set's distance against, with its spread.

    Held-out digits only, because the classifier's features of digits it trained on sit closer
    together (measured at n = 100: 713 for trained digits against 1026 for held-out ones of the
    same writers), which would make real sets look better than they are to the judge.
    """

    def __init__(self, classifier: DigitClassifier, real: np.ndarray, reference_size: int = REFERENCE_SIZE) -> None:
        if len(real) < VAL_SIZE or reference_size >= VAL_SIZE:
            raise ValueError(f"need the {VAL_SIZE} held-out digits and a reference smaller than that")
        self.classifier = classifier
        self.reference_size = reference_size
        self.reference = classifier.features(real[-reference_size:])
        self.pool = classifier.features(real[-VAL_SIZE:-reference_size])
        self._real: dict[int, dict[str, float]] = {}

    def real_distance(self, n: int) -> dict[str, float] | None:
        """Mean, min and max distance of REAL_DRAWS random sets of n held-out real digits; None below MIN_FRECHET."""
        if n < MIN_FRECHET:
            return None
        if n > len(self.pool):
            raise ValueError(
                f"real sets of {n} need {n} held-out digits besides the reference; there are {len(self.pool)}"
            )
        if n not in self._real:
            rng = np.random.default_rng(n)
            draws = [
                frechet_distance(self.pool[rng.choice(len(self.pool), n, replace=False)], self.reference)
                for _ in range(REAL_DRAWS if n < len(self.pool) else 1)
            ]
            self._real[n] = {"mean": float(np.mean(draws)), "min": min(draws), "max": max(draws), "draws": len(draws)}
        return self._real[n]

    def score(self, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        predicted = self.classifier.predict(images)
        n = len(images)
        frechet = frechet_distance(self.classifier.features(images), self.reference) if n >= MIN_FRECHET else None
        return {
            "n": n,
            "accuracy": float((predicted == labels).mean()),
            "frechet": frechet,
            "frechet_real": self.real_distance(n),
            "predicted": predicted,
        }


# ---- sampling ------------------------------------------------------------------------------------


UNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""The PyTorch U-Net or a `runners.UNetRunner`: both take (x, t, labels) and return eps."""


def generate(
    unet: UNet,
    config: ModelConfig,
    n: int,
    steps: int,
    guidance_scale: float,
    seed: int = 0,
    batch_size: int = 50,
    device: str = "cpu",
) -> np.ndarray:
    """n class-balanced DDIM (eta 0) images, uint8 [n, H, W, C], in chunks of `batch_size` images.

    An image depends only on its seed, label and options (the noise is per image), so chunking
    changes nothing but memory and the U-Net's batch size (twice `batch_size` under guidance).
    """
    pipeline = Pipeline(unet, config, device)  # type: ignore[arg-type]  # any (x, t, labels) -> eps callable
    labels = balanced_labels(n, config.unet.num_classes)
    seeds = seed + np.arange(n)
    chunks = [
        pipeline.sample(seeds[i : i + batch_size], steps, "ddim", 0.0, labels[i : i + batch_size], guidance_scale)
        for i in range(0, n, batch_size)
    ]
    return np.concatenate(chunks)


def pixel_difference(images: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """Mean and max absolute per-pixel difference in 0-255 levels."""
    diff = np.abs(images.astype(np.int16) - reference.astype(np.int16))
    return float(diff.mean()), int(diff.max())


class Sources:
    """The PyTorch model and every artifact, exported on the fly into a temporary folder."""

    def __init__(self, checkpoint: Path | str, data_dir: Path | None, workdir: Path, device: str, threads: int | None):
        from ddpm_triton.export.repository import ArtifactBuilder

        from .checkpoint import load_model

        self.model, self.config = load_model(checkpoint, device)
        self.checkpoint, self.device, self.threads, self.workdir = Path(checkpoint), device, threads, workdir
        # The builder traces the module where it sits, so a CUDA run gets CUDA TorchScript artifacts.
        self.builder = ArtifactBuilder(self.model, self.config, workdir, data_dir, max_batch=256)

    def load(self, name: str) -> UNet:
        """The eps callable of `name`; raises TensorRTUnavailable (or ValueError) when it cannot run here."""
        if name == PYTORCH:
            return self.model
        if name in LIVE:
            return load_runner(self.checkpoint, self.device, precision=LIVE[name])
        variant = Variant(*name.split("_"))
        if variant.format == "tensorrt":
            import_tensorrt()
            if self.device == "cpu":
                raise ValueError("TensorRT needs a CUDA device")
        path = self.workdir / "artifacts" / variant.model_name / variant.filename
        if not path.is_file():
            self.builder.build(variant, path)
        return load_runner(path, self.device, self.threads)


# ---- the report ----------------------------------------------------------------------------------


@dataclass
class PrecisionRow:
    variant: str
    n: int | None = None
    accuracy: float | None = None
    frechet: float | None = None
    frechet_real: dict[str, float] | None = None  # real digits, same n: mean, min, max over draws
    mean_diff: float | None = None  # 0-255 levels, vs the PyTorch fp32 images of the same seeds
    max_diff: int | None = None
    agreement: float | None = None  # share of images the classifier reads as it reads the fp32 image
    seconds: float | None = None
    note: str = ""


@dataclass
class GridCell:
    guidance_scale: float
    steps: int
    n: int
    accuracy: float
    frechet: float | None
    frechet_real: dict[str, float] | None
    seconds: float
    note: str = ""


@dataclass
class QualityReport:
    settings: dict[str, Any]
    precision: list[PrecisionRow] = field(default_factory=list)
    grid: list[GridCell] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def to_markdown(self) -> str:
        s = self.settings
        lines = [f"# Sample quality of `{s['checkpoint']}`", ""]
        lines += [f"- {key}: {value}" for key, value in self.meta.items()]
        lines += [
            f"- judge: `{s['classifier']}` ({s['classifier_val_accuracy']:.1%} on its 1,000 held-out real digits)",
            f"- sampler: DDIM, eta 0 (deterministic); image i has seed {s['seed']} + i and class i % 10",
            (
                f"- FD reference: the last {s['reference_size']} MNIST test digits (held out from the classifier); "
                f"'real digits' = the FD of {REAL_DRAWS} random sets of as many held-out real digits (the other "
                f"{VAL_SIZE - s['reference_size']}) against the same reference: mean (min–max)"
            ),
            f"- threads: {s['threads']}; wall times are on shared cores and only roughly comparable",
            "",
        ]
        if self.precision:
            lines += [
                f"## By format and precision: {s['images']} images, {s['steps']} steps, guidance {s['guidance_scale']:g}",
                "",
                (
                    "Differences are to the PyTorch fp32 images of the same seeds, in 0-255 levels; 'agree' is how "
                    f"often the classifier reads the same class in both. FD = {FRECHET_LABEL}."
                ),
                "",
                "| artifact | images | accuracy | FD | FD of real digits | mean / max diff to fp32 | agree | seconds |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for r in self.precision:
                if r.n is None:
                    lines.append(f"| {title(r.variant)} | {r.note} | | | | | | |")
                    continue
                diff = "reference" if r.variant == PYTORCH else f"{r.mean_diff:.3f} / {r.max_diff}"
                agree = "" if r.variant == PYTORCH else f"{r.agreement:.1%}"
                note = f" ({r.note})" if r.note else ""
                lines.append(
                    f"| {title(r.variant)}{note} | {r.n} | {r.accuracy:.1%} | {_fd(r.frechet, r.frechet_real)} "
                    f"| {diff} | {agree} | {r.seconds:.0f} |"
                )
            lines.append("")
        if self.grid:
            lines += [
                f"## By guidance scale and steps: {s['grid_images']} images per cell, sampled with {title(s['grid_variant'])}",
                "",
                (
                    "Guidance 0 samples with the null label's eps alone (unconditional), 1 is the conditional model "
                    f"without guidance. FD = {FRECHET_LABEL}."
                ),
                "",
                "| guidance | steps | accuracy | FD | FD of real digits | seconds |",
                "| ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for c in self.grid:
                note = f" ({c.note})" if c.note else ""
                lines.append(
                    f"| {c.guidance_scale:g} | {c.steps} | {c.accuracy:.1%} | {_fd(c.frechet, c.frechet_real)} "
                    f"| {c.seconds:.0f}{note} |"
                )
            lines.append("")
        return "\n".join(lines)


def _fd(value: float | None, real: dict[str, float] | None) -> str:
    """'1021 | 908 (783–1020)': the set's distance, then real sets' mean and range; two table cells."""
    if value is None or real is None:
        return f"— (< {MIN_FRECHET} images) | —"
    return f"{value:.0f} | {real['mean']:.0f} ({real['min']:.0f}–{real['max']:.0f})"


# ---- the evaluation ------------------------------------------------------------------------------


def evaluate(
    checkpoint: Path | str,
    data_dir: Path | str,
    classifier_path: Path | str = CLASSIFIER_PATH,
    variants: Sequence[str] = VARIANTS,
    images: int = 200,
    steps: int = 20,
    guidance_scale: float = 2.0,
    grid_images: int = 100,
    grid_guidance: Sequence[float] = (0.0, 1.0, 2.0, 4.0),
    grid_steps: Sequence[int] = (10, 20, 50),
    full_grid: bool = False,
    grid_variant: str = "onnx_fp32",
    limits: dict[str, int] | None = None,
    seed: int = 0,
    batch_size: int = 50,
    device: str = "cpu",
    threads: int | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> QualityReport:
    """Run the precision table (`variants`, `images` each) and the guidance x steps grid.

    The grid is a cross by default: every guidance scale at `steps`, every step count at
    `guidance_scale` (`full_grid` for the whole product). Its cell at (`guidance_scale`, `steps`)
    reuses the first `grid_images` images of the precision row of `grid_variant`. `limits` caps
    the images of a row by variant name (default on a CPU: CPU_LIMITS). images = 0 skips the table,
    grid_images = 0 the grid.
    """
    unknown = [v for v in [*variants, grid_variant] if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    limits = dict(CPU_LIMITS if device == "cpu" else {}) | dict(limits or {})
    data = load_idx(Path(data_dir), "test")
    judge = Judge(load_classifier(classifier_path, device), data.images)
    settings = {
        "checkpoint": str(checkpoint),
        "classifier": str(classifier_path),
        "classifier_val_accuracy": classifier_metrics(classifier_path).get("val_accuracy", float("nan")),
        "images": images,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "grid_images": grid_images,
        "grid_variant": grid_variant,
        "limits": limits,
        "seed": seed,
        "batch_size": batch_size,
        "reference_size": judge.reference_size,
        "device": device,
        "threads": threads if threads is not None else torch.get_num_threads(),
    }
    report = QualityReport(settings)
    with tempfile.TemporaryDirectory(prefix="ddpm-evaluate-") as tmp:
        sources = Sources(checkpoint, Path(data_dir), Path(tmp), device, threads)
        config = sources.config
        if not config.unet.num_classes:
            raise ValueError("label accuracy needs a class-conditional model")

        def sample(unet: UNet, n: int, steps_: int, guidance: float) -> tuple[np.ndarray, float]:
            start = time.perf_counter()
            out = generate(unet, config, n, steps_, guidance, seed, batch_size, device)
            return out, time.perf_counter() - start

        cached: dict[str, np.ndarray] = {}
        if images:
            labels = balanced_labels(images, config.unet.num_classes)
            order = [PYTORCH] + [v for v in variants if v != PYTORCH]  # the reference first
            for name in order:
                n = min(images, limits.get(name, images))
                row = PrecisionRow(name)
                try:
                    unet = sources.load(name)
                except TensorRTUnavailable:
                    row.note = "not run here (no TensorRT)"
                except ValueError as err:
                    row.note = f"not run here ({err})"
                else:
                    log(f"{title(name)}: {n} images, {steps} steps, guidance {guidance_scale:g} ...")
                    out, row.seconds = sample(unet, n, steps, guidance_scale)
                    cached[name] = out
                    score = judge.score(out, labels[:n])
                    row.n, row.accuracy = n, score["accuracy"]
                    row.frechet, row.frechet_real = score["frechet"], score["frechet_real"]
                    if name != PYTORCH:
                        common = min(n, len(cached[PYTORCH]))  # the same seeds in both
                        diff = compare(cached[PYTORCH][:common], out[:common], judge.classifier)
                        row.mean_diff, row.max_diff, row.agreement = (
                            diff["mean_diff"],
                            diff["max_diff"],
                            diff["agreement"],
                        )
                    if n < images:
                        row.note = f"first {n} images only: {LIMIT_REASONS.get(name, 'limited')}"
                    log(f"  {_row_line(row)}")
                if name in variants:
                    report.precision.append(row)

        if grid_images:
            cells = _cells(grid_guidance, grid_steps, guidance_scale, steps, full_grid)
            unet = sources.load(grid_variant)
            labels = balanced_labels(grid_images, config.unet.num_classes)
            for guidance, steps_ in cells:
                reused = (guidance, steps_) == (guidance_scale, steps) and len(
                    cached.get(grid_variant, ())
                ) >= grid_images
                if reused:
                    out, seconds, note = cached[grid_variant][:grid_images], 0.0, "images of the table above"
                    log(
                        f"grid: guidance {guidance:g}, {steps_} steps: the first {grid_images} images of {title(grid_variant)} above"
                    )
                else:
                    log(f"grid: guidance {guidance:g}, {steps_} steps, {grid_images} images ...")
                    (out, seconds), note = sample(unet, grid_images, steps_, guidance), ""
                score = judge.score(out, labels)
                cell = GridCell(
                    guidance,
                    steps_,
                    grid_images,
                    score["accuracy"],
                    score["frechet"],
                    score["frechet_real"],
                    seconds,
                    note,
                )
                report.grid.append(cell)
                log(
                    f"  accuracy {cell.accuracy:.1%}, FD {_fd(cell.frechet, cell.frechet_real).replace(' | ', ', real ')}, {seconds:.0f} s"
                )
    return report


def _row_line(row: PrecisionRow) -> str:
    parts = [f"accuracy {row.accuracy:.1%}", f"FD {_fd(row.frechet, row.frechet_real).replace(' | ', ', real ')}"]
    if row.mean_diff is not None:
        parts.append(f"diff mean {row.mean_diff:.3f} max {row.max_diff}, agree {row.agreement:.1%}")
    return ", ".join(parts) + f", {row.seconds:.0f} s"


def _cells(
    guidances: Sequence[float], steps_list: Sequence[int], guidance: float, steps: int, full: bool
) -> list[tuple[float, int]]:
    if full:
        cells = [(float(g), int(s)) for g in guidances for s in steps_list]
    else:
        cells = [(float(g), int(steps)) for g in guidances] + [(float(guidance), int(s)) for s in steps_list]
    return sorted(set(cells))


def compare(reference: np.ndarray, images: np.ndarray, classifier: DigitClassifier) -> dict[str, Any]:
    """Image-space distance of one artifact's images to the reference images of the same seeds:
    mean and max per-pixel difference (0-255 levels) and the share the classifier reads alike."""
    mean, worst = pixel_difference(images, reference)
    agreement = float((classifier.predict(images) == classifier.predict(reference)).mean())
    return {"mean_diff": mean, "max_diff": worst, "agreement": agreement}
