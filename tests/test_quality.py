"""Sample quality: the served model draws the digits asked for, low-precision artifacts draw nearly
the fp32 images, and the evaluation and figures commands produce what they promise.

The judge is the shipped MNIST classifier (98.9% on its held-out real digits).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ddpm_triton.export.onnx import export_onnx
from PIL import Image

from ddpm_triton.checkpoint import load_model
from ddpm_triton.classifier import load_classifier
from ddpm_triton.cli import main
from ddpm_triton.evaluate import FRECHET_LABEL, compare, evaluate, generate
from ddpm_triton.runners import load_runner

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "mnist" / "ema.safetensors"
CLASSIFIER = ROOT / "models" / "mnist-classifier" / "classifier.safetensors"
SERVED_INT8 = ROOT / "model_repository" / "unet_onnx_int8" / "1" / "model.onnx"


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(CLASSIFIER)


# ---- through the real server -------------------------------------------------------------------------


@pytest.mark.server
def test_served_digits_read_as_the_requested_class(server, classifier) -> None:
    """50 images, 5 of every class, 20 DDIM steps, the server's default guidance (2)."""
    from ddpm_client import DDPMClient

    labels = np.repeat(np.arange(10), 5)
    with DDPMClient(server.grpc_url) as client:
        images = client.generate(len(labels), seed=0, steps=20, sampler="ddim", class_label=labels.tolist())
    assert images.shape == (50, 28, 28, 1)
    accuracy = (classifier.predict(images) == labels).mean()
    assert accuracy >= 0.9, f"the classifier read {accuracy:.0%} of the served digits as the requested class"


# ---- low precision in image space ----------------------------------------------------------------------

IMAGES, STEPS, GUIDANCE = 8, 10, 2.0
MEAN_DIFF_BOUND = {"onnx_int8": 15.0, "onnx_fp16": 1.0}
"""Mean |image - fp32 image| in 0-255 levels over these 8 images (seeds 0-7, classes 0-7, DDIM eta 0,
10 steps, guidance 2). Measured: int8 9.4 (max 249: a DDIM trajectory that starts from a slightly
different eps ends on a slightly different stroke), fp16 0.27; over 40 images 9.3 and 0.34.
int8 costs real pixels, not the digit: the classifier read all 40 as it read the fp32 image."""


@pytest.fixture(scope="module")
def fp32_images() -> np.ndarray:
    model, config = load_model(CHECKPOINT)
    return generate(model, config, IMAGES, STEPS, GUIDANCE)


@pytest.mark.parametrize("variant", sorted(MEAN_DIFF_BOUND))
def test_low_precision_images_stay_near_fp32(variant, fp32_images, classifier, tmp_path) -> None:
    model, config = load_model(CHECKPOINT)
    if variant == "onnx_int8":
        if not SERVED_INT8.is_file():
            pytest.fail(f"no {SERVED_INT8}: run `make repository` (make test does)")
        path = SERVED_INT8  # the served artifact, calibrated on real MNIST digits
    else:
        path = export_onnx(model, tmp_path / "model.onnx", "fp16")
    images = generate(load_runner(path, num_threads=2), config, IMAGES, STEPS, GUIDANCE)
    result = compare(fp32_images, images, classifier)
    assert result["mean_diff"] <= MEAN_DIFF_BOUND[variant], result
    assert result["agreement"] >= 7 / 8, result
    assert (classifier.predict(images) == np.arange(IMAGES)).mean() >= 7 / 8


# ---- the commands --------------------------------------------------------------------------------------


def test_evaluate_reports_accuracy_and_the_labelled_distance(mnist_dir, tmp_path) -> None:
    """A seconds-long evaluation: PyTorch only, 2 steps, and a TensorRT row that says why it did not run."""
    report = evaluate(
        CHECKPOINT, mnist_dir, CLASSIFIER, variants=["pytorch_fp32", "tensorrt_fp16"], images=10, steps=2,
        grid_images=10, grid_guidance=[0.0, 2.0], grid_steps=[2], grid_variant="pytorch_fp32", threads=2,
        log=lambda line: None,
    )  # fmt: skip
    pytorch, tensorrt = report.precision
    assert pytorch.n == 10 and 0 <= pytorch.accuracy <= 1 and pytorch.frechet is None  # too few for a distance
    assert tensorrt.n is None and "not run here" in tensorrt.note
    assert [(c.guidance_scale, c.steps) for c in report.grid] == [(0.0, 2), (2.0, 2)]
    assert report.grid[1].accuracy == pytorch.accuracy  # the same images, reused
    text = report.to_markdown()
    assert FRECHET_LABEL in text and "not run here" in text
    assert json.loads(report.to_json())["precision"][0]["variant"] == "pytorch_fp32"


def test_figures_command_writes_three_pngs(mnist_dir, tmp_path) -> None:
    main(["figures", "--out", str(tmp_path), "--checkpoint", str(CHECKPOINT), "--data-dir", str(mnist_dir),
          "--per-class", "1", "--steps", "2", "--reverse-steps", "3", "--device", "cpu"])  # fmt: skip
    sizes = {}
    for name in ("samples.png", "forward.png", "reverse.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG"
            sizes[name] = picture.size
    assert sizes["samples.png"][1] > 10 * 28  # one row per class, enlarged
    assert sizes["forward.png"][0] > 8 * 28 * 3  # eight timesteps, enlarged three times
    assert sizes["reverse.png"][1] > 2 * 28 * 3  # x_t and predicted x_0
