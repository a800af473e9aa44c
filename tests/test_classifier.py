"""The shipped models: the digit classifier reads real digits, the Frechet distance behaves, the DDPM loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddpm_triton.checkpoint import load_model
from ddpm_triton.classifier import VAL_SIZE, classifier_metrics, frechet_distance, load_classifier
from ddpm_triton.config import preset
from ddpm_triton.data import load_idx

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "models" / "mnist-classifier" / "classifier.safetensors"
DDPM = ROOT / "models" / "mnist" / "ema.safetensors"


@pytest.fixture(scope="module")
def held_out(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The last 1,000 MNIST test images: the classifier's validation split, never trained on."""
    data = load_idx(mnist_dir)
    assert data.labels is not None
    return data.images[-VAL_SIZE:], data.labels[-VAL_SIZE:]


def test_shipped_classifier_reads_real_digits(held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = held_out
    model = load_classifier(CLASSIFIER)
    accuracy = (model.predict(images) == labels).mean()
    assert accuracy >= 0.95, accuracy
    assert classifier_metrics(CLASSIFIER)["val_accuracy"] == pytest.approx(accuracy, abs=0.005)
    feats = model.features(images[:10])
    assert feats.shape == (10, 128) and feats.dtype == np.float32


def test_classifier_rejects_other_layouts() -> None:
    model = load_classifier(CLASSIFIER)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((2, 1, 28, 28), dtype=np.float32))


def test_frechet_distance_is_zero_for_a_set_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2000, 16)) @ rng.normal(size=(16, 16))
    assert abs(frechet_distance(feats, feats)) < 1e-6
    shifts = [frechet_distance(feats, feats + s) for s in (0.1, 0.5, 2.0)]
    assert shifts == sorted(shifts) and shifts[0] > 0
    # A pure mean shift adds exactly |shift|^2 per dimension.
    assert shifts[-1] == pytest.approx(16 * 2.0**2, rel=1e-6)
    scaled = frechet_distance(feats, 1.5 * feats)
    assert scaled > 0.1
    with pytest.raises(ValueError):
        frechet_distance(feats, feats[:, :8])


def test_shipped_ddpm_is_the_mnist_preset() -> None:
    assert DDPM.stat().st_size < 20 * 2**20
    model, config = load_model(DDPM)
    assert config == preset("mnist")
    assert config.unet.conditional and config.unet.num_classes == 10
    assert not model.training
