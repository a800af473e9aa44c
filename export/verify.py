"""How far an artifact's output is from the PyTorch U-Net it was exported from, on the same inputs.

Export measures every artifact it writes this way, through the same runner the server uses, so a
broken trace, a lossy cast or a badly calibrated int8 model shows up as a number before it is served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_triton.artifacts import INPUT_LABEL, INPUT_T, INPUT_X
from ddpm_triton.unet import UNet

Runner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
Array = np.ndarray | torch.Tensor
Inputs = Mapping[str, Array] | Sequence[Array]
"""One batch: a feed keyed by artifact tensor name (X, T[, LABEL]) or a tuple (x, t[, labels])."""


@dataclass(frozen=True)
class Parity:
    max_abs_error: float
    relative_error: float
    """||artifact - reference|| / ||reference|| over all outputs (inf against an all-zero reference)."""

    def __str__(self) -> str:
        return f"relative error {self.relative_error:.2e}, max |error| {self.max_abs_error:.2e}"


def _unpack(batch: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, Mapping):
        x, t, labels = batch[INPUT_X], batch[INPUT_T], batch.get(INPUT_LABEL)
    else:
        x, t, *rest = batch
        labels = rest[0] if rest else None
    return torch.as_tensor(x), torch.as_tensor(t), None if labels is None else torch.as_tensor(labels)


def parity(reference: UNet, runner: Runner, inputs: Sequence[Inputs]) -> Parity:
    """Compare `runner` with `reference` (float32, eval mode) over every batch of `inputs`."""
    if reference.training:
        raise ValueError("the reference U-Net is in training mode: dropout would make its output random; call .eval()")
    if not inputs:
        raise ValueError("parity needs at least one batch of inputs")
    device = next(reference.parameters()).device
    expected, actual = [], []
    with torch.inference_mode():
        for batch in inputs:
            x, t, labels = _unpack(batch)
            on_device = None if labels is None else labels.to(device)
            expected.append(reference(x.to(device), t.to(device), on_device).float().cpu())
            actual.append(runner(x, t, labels).float().cpu())
    want = torch.cat(expected)
    diff = torch.cat(actual) - want
    error, scale = diff.norm().item(), want.norm().item()
    relative = error / scale if scale > 0 else (0.0 if error == 0 else float("inf"))
    return Parity(max_abs_error=diff.abs().max().item(), relative_error=relative)
