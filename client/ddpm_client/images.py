"""Generated images to pictures and PNG files: one per image, or a grid, labelled by class.

The model's images are small (28 to 64 pixels), so a grid enlarges them by a whole factor with
nearest-neighbour sampling: readable, and each model pixel is still one solid block.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .contract import NO_LABEL

GRID_MIN_TILE = 64
"""Smallest side, in pixels, that a grid enlarges its tiles to."""


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """uint8 [N, H, W, C] with C = 1 (grayscale), 3 (RGB) or 4 (RGBA) -> one PIL image each."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W, 1|3|4] images, got {images.dtype} {list(images.shape)}")
    return [Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image) for image in images]


def grid(
    images: np.ndarray,
    columns: int | None = None,
    labels: Sequence[int] | None = None,
    pad: int = 2,
) -> Image.Image:
    """One RGB picture of all images, `columns` wide (default: about square).

    Given one class label per image, each class starts a row of its own, in ascending order, named
    at its left; `columns` then defaults to the largest class, so each class fills one row.
    """
    tiles = [tile.convert("RGB") for tile in to_pil(images)]
    if not tiles:
        raise ValueError("a grid needs at least one image")
    rows, row_names = _layout(len(tiles), columns, labels)
    width, height = tiles[0].size
    scale = max(1, GRID_MIN_TILE // max(width, height))
    cell_w, cell_h = width * scale + pad, height * scale + pad
    boxes = {name: ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), name) for name in row_names if name}
    margin = max((int(box[2]) + 2 * pad for box in boxes.values()), default=0)
    canvas = Image.new("RGB", (margin + max(map(len, rows)) * cell_w + pad, len(rows) * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (row, name) in enumerate(zip(rows, row_names)):
        top = pad + r * cell_h
        for c, index in enumerate(row):
            tile = tiles[index].resize((width * scale, height * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (margin + pad + c * cell_w, top))
        if name:
            draw.text((pad, top + (height * scale - int(boxes[name][3])) // 2), name, fill="black")
    return canvas


def save_png(picture: Image.Image, path: str | Path) -> Path:
    """Write a PNG, creating its folder; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path


def save_grid(
    images: np.ndarray,
    path: str | Path,
    columns: int | None = None,
    labels: Sequence[int] | None = None,
) -> Path:
    """`grid` written as a PNG."""
    return save_png(grid(images, columns, labels), path)


def save_each(
    images: np.ndarray,
    directory: str | Path,
    seeds: Sequence[int],
    labels: Sequence[int] | None = None,
) -> list[Path]:
    """One PNG per image, named by position, seed and class: what it takes to draw it again."""
    names = [
        f"{i:04d}_seed{seed}" + ("" if labels is None else f"_class{labels[i]}") + ".png"
        for i, seed in enumerate(seeds)
    ]
    return [save_png(picture, Path(directory) / name) for picture, name in zip(to_pil(images), names)]


def _layout(n: int, columns: int | None, labels: Sequence[int] | None) -> tuple[list[list[int]], list[str]]:
    """Image indices per row, and each row's name ("" but on the first row of a class)."""
    if labels is None:
        groups, names = [list(range(n))], [""]
        width = columns or int(np.ceil(np.sqrt(n)))
    else:
        if len(labels) != n:
            raise ValueError(f"labels must hold one label per image ({n}), got {len(labels)}")
        classes = sorted({int(label) for label in labels})
        groups = [[i for i in range(n) if labels[i] == label] for label in classes]
        names = ["uncond." if label == NO_LABEL else str(label) for label in classes]
        width = columns or max(map(len, groups))
    rows, row_names = [], []
    for group, name in zip(groups, names):
        for start in range(0, len(group), width):
            rows.append(group[start : start + width])
            row_names.append(name if start == 0 else "")
    return rows, row_names
