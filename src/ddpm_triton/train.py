"""Training: the DDPM objective with the habits that make it cheap and safe to run long.

AdamW (fused on CUDA), linear warmup into cosine decay, bf16/fp16 autocast, gradient clipping and
accumulation, an EMA of the weights for sampling, label dropout for classifier-free guidance, and a
directory checkpoint that resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ddpm_client.images import save_grid
from tqdm import tqdm

from .checkpoint import MODEL_FILE, RAW_FILE, TRAINER_FILE, load_weights, save_weights
from .config import ModelConfig
from .data import Dataset, to_model_range
from .diffusion import Diffusion
from .ema import EMA
from .pipeline import Pipeline
from .unet import UNet


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16
    label_dropout: float = 0.1  # probability of training a sample unconditionally (guidance)
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = 1000
    sample_every: int = 1000
    log_every: int = 50
    max_minutes: float = 0.0  # stop (and save) after this much wall time; 0: no limit


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    def __init__(
        self, model_config: ModelConfig, train_config: TrainConfig, dataset: Dataset, out_dir: Path, device: str
    ) -> None:
        if model_config.unet.conditional and dataset.labels is None:
            raise ValueError("a class-conditional model needs a labelled dataset")
        if model_config.unet.conditional and dataset.num_classes > model_config.unet.num_classes:
            raise ValueError(
                f"the dataset has {dataset.num_classes} classes, the model only {model_config.unet.num_classes}"
            )
        self.model_config, self.config, self.out_dir = model_config, train_config, out_dir
        self.device = torch.device(device)
        torch.manual_seed(train_config.seed)
        self.rng = np.random.default_rng(train_config.seed)
        # Datasets of this kind fit on the device: batches are gathered there, not copied per step.
        self.data = torch.from_numpy(to_model_range(dataset.images)).to(self.device)
        self.labels = torch.from_numpy(dataset.labels).to(self.device) if dataset.labels is not None else None
        self.model = UNet(model_config.unet).to(self.device)
        self.ema = EMA(self.model, train_config.ema_decay)
        self.diffusion = Diffusion(model_config.diffusion, self.device)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay, fused=fused
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, train_config.warmup_steps, train_config.steps)
        )
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[train_config.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train_config.precision == "fp16")
        self.forward = torch.compile(self.model) if train_config.compile else self.model
        self.step = 0
        self.history: list[dict[str, float]] = []
        if (out_dir / TRAINER_FILE).is_file():
            self._resume()

    # ---- checkpoints -----------------------------------------------------------------------------

    def save(self) -> None:
        metadata = {"step": str(self.step)}
        save_weights(self.out_dir / RAW_FILE, self.model.state_dict(), self.model_config, **metadata)
        save_weights(self.out_dir / MODEL_FILE, self.ema.state_dict(), self.model_config, **metadata)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_config": asdict(self.config),
        }
        torch.save(state, self.out_dir / TRAINER_FILE)
        (self.out_dir / "history.json").write_text(json.dumps(self.history))

    def _resume(self) -> None:
        raw, config = load_weights(self.out_dir / RAW_FILE)
        if config != self.model_config:
            raise ValueError(f"{self.out_dir} holds a checkpoint of another model config: {config}")
        self.model.load_state_dict(raw)
        self.ema.load_state_dict(load_weights(self.out_dir / MODEL_FILE)[0])
        state = torch.load(self.out_dir / TRAINER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        history = self.out_dir / "history.json"
        self.history = json.loads(history.read_text()) if history.is_file() else []
        # Skip the batches already consumed so a resumed run sees the same data order.
        for _ in range(self.step * self.config.grad_accumulation):
            self.rng.integers(0, len(self.data), self.config.batch_size)
            self.rng.random(self.config.batch_size)

    # ---- one optimisation step -------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        cfg = self.model_config.unet
        while True:
            index = torch.from_numpy(self.rng.integers(0, len(self.data), self.config.batch_size)).to(self.device)
            drop = torch.from_numpy(self.rng.random(self.config.batch_size) < self.config.label_dropout)
            labels = None
            if cfg.conditional and self.labels is not None:
                labels = self.labels[index].masked_fill(drop.to(self.device), cfg.num_classes)
            yield self.data[index], labels

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        t = torch.randint(0, self.diffusion.timesteps, (x0.shape[0],), device=self.device)
        noise = torch.randn_like(x0)
        xt = self.diffusion.q_sample(x0, t, noise).float()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            eps = self.forward(xt, t.float(), labels)
        return self.diffusion.simple_loss(eps, noise)

    def train_step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """One optimiser step; returns the loss as a device tensor (reading it would sync every step)."""
        self.model.train()
        total = torch.zeros((), device=self.device)
        for _ in range(self.config.grad_accumulation):
            loss = self.loss(*next(batches)) / self.config.grad_accumulation
            self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return total

    # ---- the loop --------------------------------------------------------------------------------

    def sample_grid(self) -> Path:
        """A grid from the EMA weights (one row per class for conditional models), 50 DDIM steps."""
        model = UNet(self.model_config.unet).to(self.device).eval()
        model.load_state_dict(self.ema.state_dict())
        pipeline = Pipeline(model, self.model_config, self.device)
        classes = self.model_config.unet.num_classes
        per_row = 8
        labels = np.repeat(np.arange(classes), per_row) if classes else None
        n = len(labels) if labels is not None else 64
        images = pipeline.sample(np.arange(n), steps=50, sampler="ddim", labels=labels, guidance_scale=2.0)
        path = self.out_dir / "samples" / f"step-{self.step:07d}.png"
        save_grid(images, path, columns=per_row, labels=labels.tolist() if labels is not None else None)
        return path

    def fit(self) -> list[dict[str, float]]:
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        batches = self._batches()
        images_per_step = cfg.batch_size * cfg.grad_accumulation
        progress = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        window_loss, window_start, window_steps = torch.zeros((), device=self.device), time.perf_counter(), 0
        deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else float("inf")
        while self.step < cfg.steps and time.monotonic() < deadline:
            window_loss += self.train_step(batches)
            window_steps += 1
            progress.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": self.step,
                    "loss": window_loss.item() / window_steps,
                    "lr": self.scheduler.get_last_lr()[0],
                    "images_per_s": window_steps * images_per_step / elapsed,
                }
                self.history.append(record)
                progress.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
                window_loss, window_start, window_steps = torch.zeros((), device=self.device), time.perf_counter(), 0
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                progress.write(f"samples: {self.sample_grid()}")
            if self.step % cfg.checkpoint_every == 0:
                self.save()
        self.save()
        progress.close()
        return self.history
