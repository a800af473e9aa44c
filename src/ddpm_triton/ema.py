"""Exponential moving average of model weights: the weights that sampling and export use."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().clone().float() if v.dtype.is_floating_point else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    def decay_at(self, step: int) -> float:
        """A shorter memory early on, so the average is not dominated by the random initialisation."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """One fused update of all floating tensors (a kernel per tensor would dominate small models)."""
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].float() for k in floats], 1.0 - self.decay_at(step))
        for key, value in state.items():
            if not value.dtype.is_floating_point:
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.shadow[key].copy_(value)
