"""Pictures for the docs: generated digits per class, the forward noising, the reverse denoising.

    ddpm-triton figures --out docs/

writes `samples.png` (a grid, one row per class), `forward.png` (one real MNIST digit noised by
q(x_t | x_0) at several t) and `reverse.png` (one sample's x_t and predicted x_0 along the DDIM
steps, from `sampling.denoise`'s `observe` hook). 28x28 images are enlarged by whole factors with
nearest-neighbour sampling, so every model pixel stays one solid block.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ddpm_client.images import grid, save_png, to_pil
from PIL import Image, ImageDraw, ImageFont

from .config import ModelConfig
from .data import load_idx, to_model_range
from .diffusion import Diffusion
from .noise import SeededNoise
from .pipeline import Pipeline
from .sampling import timesteps as schedule_of
from .sampling import to_uint8

FORWARD_TIMESTEPS = (0, 50, 100, 200, 400, 600, 800, 999)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def labelled_table(
    rows: Sequence[np.ndarray],
    row_names: Sequence[str],
    column_names: Sequence[str],
    scale: int = 3,
    pad: int = 6,
    font_size: int = 14,
) -> Image.Image:
    """A table of images: rows of uint8 [K, H, W, C] images, each row named at its left, each column on top."""
    if len(rows) != len(row_names) or any(len(r) != len(column_names) for r in rows):
        raise ValueError("need one name per row and one image per column in every row")
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font)
        return int(right - left), int(bottom - top)

    height, width = rows[0].shape[1:3]
    tile_w, tile_h = width * scale, height * scale
    margin = max(size(name)[0] for name in row_names) + 2 * pad
    header = max(size(name)[1] for name in column_names) + 2 * pad
    cell_w = max(tile_w, max(size(name)[0] for name in column_names)) + pad
    canvas = Image.new("RGB", (margin + len(column_names) * cell_w + pad, header + len(rows) * (tile_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(column_names):
        w, _ = size(name)
        draw.multiline_text(
            (margin + c * cell_w + (cell_w - w) // 2, pad), name, fill="black", font=font, align="center"
        )
    for r, (images, name) in enumerate(zip(rows, row_names)):
        top = header + r * (tile_h + pad)
        _, h = size(name)
        draw.text((pad, top + (tile_h - h) // 2), name, fill="black", font=font)
        for c, tile in enumerate(to_pil(images)):
            tile = tile.convert("RGB").resize((tile_w, tile_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (margin + c * cell_w + (cell_w - tile_w) // 2, top))
    return canvas


# ---- (a) samples per class -----------------------------------------------------------------------


def samples_figure(
    pipeline: Pipeline, per_class: int = 8, steps: int = 50, guidance_scale: float = 2.0, seed: int = 0
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A grid with one row per class (ddpm_client's labelled grid); also returns images and labels."""
    classes = pipeline.config.unet.num_classes
    if not classes:
        raise ValueError("a grid per class needs a class-conditional model")
    labels = np.repeat(np.arange(classes), per_class)
    images = pipeline.sample(seed + np.arange(len(labels)), steps, "ddim", 0.0, labels, guidance_scale)
    return grid(images, labels=labels.tolist()), images, labels


# ---- (b) forward noising -------------------------------------------------------------------------


def forward_images(config: ModelConfig, digit: np.ndarray, t_values: Sequence[int], seed: int = 0) -> np.ndarray:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for one uint8 image [H, W, C], with one eps for all t."""
    diffusion = Diffusion(config.diffusion)
    x0 = torch.from_numpy(to_model_range(digit[None])).expand(len(t_values), -1, -1, -1)
    u = config.unet
    eps = SeededNoise((u.in_channels, u.image_size, u.image_size))(torch.tensor([seed]), 0)
    t = torch.as_tensor(list(t_values), dtype=torch.int64)
    return to_uint8(diffusion.q_sample(x0, t, eps.expand_as(x0))).numpy()


def forward_figure(
    config: ModelConfig, digit: np.ndarray, t_values: Sequence[int] = FORWARD_TIMESTEPS, seed: int = 0
) -> Image.Image:
    alpha_bar = Diffusion(config.diffusion).alpha_bar
    names = [f"t = {t}\nsignal {alpha_bar[t].sqrt().item():.2f}" for t in t_values]
    return labelled_table([forward_images(config, digit, t_values, seed)], ["x_t"], names)


# ---- (c) reverse denoising -----------------------------------------------------------------------


def reverse_images(
    pipeline: Pipeline,
    label: int,
    steps: int = 50,
    columns: int = 8,
    guidance_scale: float = 2.0,
    seed: int = 0,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """One DDIM sample traced through `observe`: the timesteps shown, x_t and the predicted x_0 at each.

    x_t is the input of the step at t (x_T, the seed's noise, for the first), the predicted x_0 is
    the step's clipped estimate of the clean image; at t = 0 it is the output.
    """
    schedule = schedule_of(pipeline.config.diffusion.timesteps, steps)
    seeds = torch.tensor([seed], device=pipeline.device)
    inputs = {schedule[0]: pipeline.noise(seeds, 0)}
    predicted: dict[int, torch.Tensor] = {}

    def observe(t: int, x_prev: torch.Tensor, x0: torch.Tensor) -> None:
        predicted[t] = x0.clone()
        i = schedule.index(t)
        if i + 1 < len(schedule):
            inputs[schedule[i + 1]] = x_prev.clone()

    pipeline.sample([seed], steps, "ddim", 0.0, [label], guidance_scale, observe=observe)
    picks = np.unique(np.linspace(0, len(schedule) - 1, min(columns, len(schedule))).round().astype(int))
    shown = [schedule[i] for i in picks]
    x_t = to_uint8(torch.cat([inputs[t] for t in shown]).clamp(-1, 1)).cpu().numpy()
    x_0 = to_uint8(torch.cat([predicted[t] for t in shown])).cpu().numpy()
    return shown, x_t, x_0


def reverse_figure(
    pipeline: Pipeline, label: int, steps: int = 50, columns: int = 8, guidance_scale: float = 2.0, seed: int = 0
) -> Image.Image:
    shown, x_t, x_0 = reverse_images(pipeline, label, steps, columns, guidance_scale, seed)
    return labelled_table([x_t, x_0], ["x_t", "predicted x_0"], [f"t = {t}" for t in shown])


# ---- all three -----------------------------------------------------------------------------------


def write_figures(
    out: Path | str,
    checkpoint: Path | str,
    data_dir: Path | str,
    per_class: int = 8,
    steps: int = 50,
    reverse_steps: int = 50,
    reverse_label: int = 3,
    columns: int = 8,
    guidance_scale: float = 2.0,
    digit_index: int = 0,
    seed: int = 0,
    device: str = "cpu",
) -> list[Path]:
    """samples.png, forward.png and reverse.png in `out`; returns their paths."""
    from .checkpoint import load_model

    out = Path(out)
    model, config = load_model(checkpoint, device)
    pipeline = Pipeline(model, config, device)
    digit = load_idx(Path(data_dir), "test").images[digit_index]
    picture, _, _ = samples_figure(pipeline, per_class, steps, guidance_scale, seed)
    paths = [save_png(picture, out / "samples.png")]
    paths.append(save_png(forward_figure(config, digit, seed=seed), out / "forward.png"))
    paths.append(
        save_png(
            reverse_figure(pipeline, reverse_label, reverse_steps, columns, guidance_scale, seed), out / "reverse.png"
        )
    )
    return paths
