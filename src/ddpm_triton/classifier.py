"""A small MNIST classifier that judges generated digits.

A class-conditional DDPM is only useful if asking for a "7" gives a 7, and samples that look like
digits to a person should also look like digits to a network that has seen real ones. This module
trains that network (a three-layer CNN, seconds on a GPU, a few minutes on a CPU), ships it as one
safetensors file with its config in the metadata (as the DDPM checkpoints do), and measures:

- label accuracy of generated digits: how often the classifier reads the class the DDPM was asked for;
- a Frechet distance between the classifier's 128-d penultimate features of real and generated digits.

That distance is NOT the Inception FID of the literature (Heusel et al. 2017 use an ImageNet
Inception-v3 and 2048-d features): its numbers are only comparable with other numbers from this
classifier file, on MNIST-like images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .data import Dataset

FORMAT = "ddpm-triton-classifier/1"
DEFAULT_PATH = Path("models/mnist-classifier/classifier.safetensors")
VAL_SIZE = 1000
"""The last VAL_SIZE images of the dataset are held out; the rest train."""


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 28
    channels: tuple[int, int, int] = (32, 64, 64)
    feature_dim: int = 128
    num_classes: int = 10
    dropout: float = 0.3

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClassifierConfig:
        raw: dict[str, Any] = json.loads(text)
        return cls(**{**raw, "channels": tuple(raw["channels"])})


class DigitClassifier(nn.Module):
    """conv-conv-pool-conv-pool, then a 128-d feature layer and the class logits.

    `predict` and `features` take uint8 images [N, 28, 28, 1] as numpy arrays (the layout of
    `ddpm_triton.data` and of the sampling pipeline), so callers never convert by hand.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        side = config.image_size // 4
        self.feature = nn.Linear(c3 * side * side, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] in [0, 1] -> the feature layer before its ReLU, [B, feature_dim].

        Pre-activation values are used for the Frechet distance because they are closer to
        Gaussian than the rectified ones (no mass piled up at zero).
        """
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return self.feature(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(F.relu(self.embed(x))))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def _map(self, images: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> np.ndarray:
        self.eval()
        out = [fn(_to_input(images[i : i + batch_size], self.device)).cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(out).numpy()

    def predict(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """uint8 [N, 28, 28, 1] -> int64 class labels [N]."""
        return self._map(images, lambda x: self(x).argmax(1), batch_size)

    def features(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """uint8 [N, 28, 28, 1] -> float32 [N, feature_dim] penultimate features (for `frechet_distance`)."""
        return self._map(images, lambda x: self.embed(x).float(), batch_size)


def _to_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N, H, W, 1] -> float32 [N, 1, H, W] in [0, 1] on `device`."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"expected uint8 images [N, H, W, 1], got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Move the whole batch by one random (dy, dx) of up to `max_shift` pixels.

    MNIST digits sit inside a 4-pixel empty border, so a roll is a translation. It makes the
    classifier less sensitive to where a generated digit is centred, which is what it will judge.
    """
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(
    dataset: Dataset,
    device: torch.device | str = "cpu",
    epochs: int = 20,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    config: ClassifierConfig | None = None,
) -> tuple[DigitClassifier, dict[str, float]]:
    """Train on all but the last `VAL_SIZE` images; return the model (eval mode) and its metrics.

    The held-out split is the dataset's tail, so anyone can re-measure the validation accuracy
    from the same files (the MNIST test set's last 1,000 images, when trained on that set).
    """
    if dataset.labels is None:
        raise ValueError("the classifier needs a labelled dataset")
    if len(dataset) <= VAL_SIZE:
        raise ValueError(f"need more than {VAL_SIZE} images to hold {VAL_SIZE} out, got {len(dataset)}")
    config = config or ClassifierConfig(image_size=dataset.images.shape[1], num_classes=dataset.num_classes)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    model = DigitClassifier(config).to(device)
    x = _to_input(dataset.images[:-VAL_SIZE], device)
    y = torch.from_numpy(dataset.labels[:-VAL_SIZE]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    loss = torch.zeros((), device=device)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        for i in range(0, len(x), batch_size):
            index = order[i : i + batch_size]
            loss = F.cross_entropy(model(_shift(x[index], generator)), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    val_images, val_labels = dataset.images[-VAL_SIZE:], dataset.labels[-VAL_SIZE:]
    metrics = {
        "val_accuracy": float((model.predict(val_images) == val_labels).mean()),
        "train_size": float(len(x)),
        "val_size": float(VAL_SIZE),
        "epochs": float(epochs),
        "seed": float(seed),
        "final_train_loss": float(loss.item()),
        "train_seconds": time.perf_counter() - start,
    }
    return model, metrics


def save_classifier(model: DigitClassifier, path: Path | str, metrics: dict[str, float] | None = None) -> Path:
    """One safetensors file; the config (and the training metrics, for the record) in its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": model.config.to_json(), "metrics": json.dumps(metrics or {})}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_classifier(path: Path | str = DEFAULT_PATH, device: torch.device | str = "cpu") -> DigitClassifier:
    """The classifier in eval mode; refuses files that are not classifier files."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle is no dict)
    model = DigitClassifier(ClassifierConfig.from_json(metadata["config"]))
    model.load_state_dict(state)
    return model.to(device).eval()


def classifier_metrics(path: Path | str = DEFAULT_PATH) -> dict[str, float]:
    """The training metrics stored in a classifier file (val accuracy, split sizes, ...)."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("metrics", "{}"))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] (float64 arithmetic).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The trace of the matrix square
    root is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2), which has the same spectrum as S_a S_b and, unlike a general sqrtm,
    never produces complex values from rounding.
    """
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N>=2, D] of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def evaluate_generator(
    classifier: DigitClassifier,
    checkpoint: Path | str,
    real: np.ndarray,
    per_class: int = 50,
    steps: int = 50,
    guidance_scale: float = 2.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Sample `per_class` digits of every class from a DDPM file and judge them.

    Returns the classifier's accuracy on them (did the model draw the class it was asked for),
    per-class accuracy, and a Frechet distance of their features to real digits. `real` (uint8
    [N, 28, 28, 1], ideally digits the classifier never trained on) must hold more than
    `per_class * classes` images: its first that many are a real sample of the generated set's size,
    the rest the reference. The generated set and the real sample are each measured against the same
    reference, because with a few hundred images in 128 dimensions the estimate is strongly biased
    by set size: only distances between sets of equal sizes compare.
    """
    from .checkpoint import load_model
    from .pipeline import Pipeline

    model, config = load_model(checkpoint, device)
    classes = config.unet.num_classes
    if not classes:
        raise ValueError("label accuracy needs a class-conditional model")
    labels = np.repeat(np.arange(classes), per_class)
    n = len(labels)
    if len(real) <= n:
        raise ValueError(f"need more than {n} real images (a sample of {n} and a reference), got {len(real)}")
    images = Pipeline(model, config, device).sample(
        seed + np.arange(n), steps, "ddim", labels=labels, guidance_scale=guidance_scale
    )
    predicted = classifier.predict(images)
    correct = predicted == labels
    real_feats, fake_feats = classifier.features(real), classifier.features(images)
    sample, reference = real_feats[:n], real_feats[n:]
    return {
        "n": n,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "accuracy": float(correct.mean()),
        "per_class_accuracy": [float(correct[labels == c].mean()) for c in range(classes)],
        "frechet_distance": frechet_distance(fake_feats, reference),
        "frechet_distance_real": frechet_distance(sample, reference),
        "n_reference": len(reference),
    }
