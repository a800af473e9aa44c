"""In-process sampling with a PyTorch U-Net: training previews, evaluation, the reference images.

`sampling.denoise` driven by a direct call to the module. The server's engine computes the same
steps, so an image made here and one made by the server from the same seed and options agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .config import ModelConfig
from .diffusion import Diffusion
from .noise import SeededNoise
from .sampling import Batch, Trajectory, UNetCall, denoise, run, sampler_eta, to_uint8
from .unet import UNet


class Pipeline:
    def __init__(self, model: UNet, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        self.model, self.config, self.device = model, config, torch.device(device)
        self.diffusion = Diffusion(config.diffusion, self.device)
        u = config.unet
        self.noise = SeededNoise((u.in_channels, u.image_size, u.image_size), self.device)

    @torch.inference_mode()
    def _unet(self, call: UNetCall) -> torch.Tensor:
        return self.model(call.x, call.t, call.labels).float()

    def sample(
        self,
        seeds: Sequence[int] | np.ndarray,
        steps: int = 50,
        sampler: str = "ddim",
        eta: float | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        guidance_scale: float = 1.0,
        observe: Trajectory | None = None,
    ) -> np.ndarray:
        """uint8 images [N, H, W, C], one per seed. labels: class per image, -1 (or None) = unconditional."""
        n_classes = self.config.unet.num_classes
        seeds_t = torch.as_tensor(np.asarray(seeds, dtype=np.int64), device=self.device)
        labels_t = None
        if n_classes:
            raw = torch.as_tensor(np.asarray(labels if labels is not None else [-1] * len(seeds_t), dtype=np.int64))
            labels_t = torch.where(raw < 0, n_classes, raw).to(self.device)
        batch = Batch(
            seeds=seeds_t,
            steps=steps,
            eta=torch.full((len(seeds_t),), sampler_eta(sampler, eta), device=self.device),
            labels=labels_t,
            guidance=torch.full((len(seeds_t),), float(guidance_scale), device=self.device) if n_classes else None,
        )
        images = run(denoise(batch, self.diffusion, self.noise, n_classes, observe), self._unet)
        return to_uint8(images).cpu().numpy()
