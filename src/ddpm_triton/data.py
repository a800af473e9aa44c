"""Image datasets read with numpy and Pillow, as uint8 arrays [N, H, W, C] with int64 labels.

Kept free of torchvision on purpose (it does not import beside the CPU build of torch used here),
and small enough to read whole into memory: these are the datasets DDPMs are trained on.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray | None  # [N] int64, or None for unlabelled folders
    num_classes: int

    def __len__(self) -> int:
        return len(self.images)


def _open_maybe_gz(directory: Path, stem: str) -> bytes:
    for name in (stem, stem + ".gz"):
        path = directory / name
        if path.is_file():
            return gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    raise FileNotFoundError(f"{directory} has neither {stem} nor {stem}.gz")


def _parse_idx(raw: bytes, magic: int) -> np.ndarray:
    header = np.frombuffer(raw, dtype=">i4", count=2)
    if header[0] != magic:
        raise ValueError(f"idx magic number {header[0]} is not {magic}")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_idx(directory: Path, split: str = "auto") -> Dataset:
    """MNIST or Fashion-MNIST in the original idx format (gzipped or not)."""
    splits = ["train", "test"] if split == "auto" else [split]
    missing = []
    for name in splits:
        images_stem, labels_stem = IDX_FILES[name]
        try:
            images = _parse_idx(_open_maybe_gz(directory, images_stem), 2051)
            labels = _parse_idx(_open_maybe_gz(directory, labels_stem), 2049).astype(np.int64)
        except FileNotFoundError as err:
            missing.append(str(err))
            continue
        return Dataset(images[..., None].copy(), labels, 10)
    raise FileNotFoundError("no idx dataset found: " + "; ".join(missing))


def load_cifar10(directory: Path) -> Dataset:
    """CIFAR-10 "python version" batches (data_batch_1..5, or test_batch alone)."""
    names = [f"data_batch_{i}" for i in range(1, 6)]
    found = [directory / n for n in names if (directory / n).is_file()] or [
        p for p in [directory / "test_batch"] if p.is_file()
    ]
    if not found:
        raise FileNotFoundError(f"{directory} has none of {', '.join(names)} or test_batch (CIFAR-10 python batches)")
    images, labels = [], []
    for path in found:
        with path.open("rb") as f:
            # The CIFAR-10 batches are pickles by design; read only from a directory the user names.
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Dataset(np.concatenate(images), np.concatenate(labels), 10)


def load_folder(directory: Path, image_size: int, channels: int) -> Dataset:
    """Every image below a folder, center-cropped and resized; labels are the sub-folder names if any."""
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{directory} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    classes = sorted({p.parent.relative_to(directory).as_posix() for p in paths})
    mode = "L" if channels == 1 else "RGB"
    images = np.stack([_square(Image.open(p).convert(mode), image_size) for p in paths]).reshape(
        len(paths), image_size, image_size, channels
    )
    if len(classes) > 1:
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[p.parent.relative_to(directory).as_posix()] for p in paths], dtype=np.int64)
        return Dataset(images, labels, len(classes))
    return Dataset(images, None, 0)


def _square(image: Image.Image, size: int) -> np.ndarray:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC))


DATASETS = ("mnist", "fashion-mnist", "cifar10", "folder")


def load_dataset(kind: str, directory: Path | str, image_size: int = 32, channels: int = 3) -> Dataset:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--data-dir {directory} does not exist")
    if kind in ("mnist", "fashion-mnist"):
        return load_idx(directory)
    if kind == "cifar10":
        return load_cifar10(directory)
    if kind == "folder":
        return load_folder(directory, image_size, channels)
    raise ValueError(f"unknown dataset {kind!r}; choose one of {', '.join(DATASETS)}")


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
