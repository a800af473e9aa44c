"""Turning one `ddpm` request's input arrays into per-image sampling options, or a precise error.

Pure numpy, no Triton: the same function runs inside the server and under hypothesis in tests.
Every error names the input and the allowed values, because that message is what a client sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from ddpm_client import contract

from ..sampling import sampler_eta
from ..scheduler import ImageOptions


class InvalidInput(ValueError):
    """A request value outside the contract; the message names the input."""


@dataclass(frozen=True)
class Defaults:
    """What an absent optional input means, from the model config."""

    steps: int
    sampler: str
    eta: float
    guidance_scale: float


@dataclass(frozen=True)
class ModelFacts:
    timesteps: int
    num_classes: int  # 0: unconditional
    max_batch_size: int


def _column(inputs: Mapping[str, np.ndarray | None], spec: contract.TensorSpec, n: int) -> np.ndarray | None:
    value = inputs.get(spec.name)
    if value is None:
        return None
    value = np.asarray(value)
    if value.shape != (n, 1):
        raise InvalidInput(f"{spec.name} must have shape [{n}, 1] (one value per image), got {list(value.shape)}")
    return value[:, 0]


def _in_range(name: str, values: np.ndarray, low: float, high: float) -> None:
    """Raise naming the input, the allowed range and the first value outside it (NaN and inf included)."""
    inside = (values >= low) & (values <= high)
    if values.dtype.kind == "f":
        inside &= np.isfinite(values)
    if not inside.all():
        i = int(np.argmin(inside))
        raise InvalidInput(f"{name} must be in [{low:g}, {high:g}], got {values[i].item()!r} (image {i})")


def parse(inputs: Mapping[str, np.ndarray | None], facts: ModelFacts, defaults: Defaults) -> ImageOptions:
    """Validate one request; raise InvalidInput naming the first offending input."""
    seeds = inputs.get(contract.SEED.name)
    if seeds is None:
        raise InvalidInput("SEED is required: one INT64 seed per image, shape [n, 1]")
    n = np.asarray(seeds).shape[0] if np.asarray(seeds).ndim else 0
    if n == 0:
        raise InvalidInput("SEED is empty: a request must ask for at least one image")
    if n > facts.max_batch_size:
        raise InvalidInput(f"SEED asks for {n} images; at most {facts.max_batch_size} per request")
    seeds = _column(inputs, contract.SEED, n)

    steps = _column(inputs, contract.STEPS, n)
    steps = np.full(n, defaults.steps, np.int64) if steps is None else steps.astype(np.int64)
    _in_range("STEPS", steps, 1, facts.timesteps)

    raw_samplers = _column(inputs, contract.SAMPLER, n)
    samplers = [defaults.sampler] * n if raw_samplers is None else [_decode(s) for s in raw_samplers]
    unknown = [s for s in samplers if s not in contract.SAMPLERS]
    if unknown:
        raise InvalidInput(f"SAMPLER must be one of {', '.join(contract.SAMPLERS)}, got {_preview(unknown[0])}")

    eta_in = _column(inputs, contract.ETA, n)
    if eta_in is None:
        eta = np.array([sampler_eta(s, None if s == "ddpm" else defaults.eta) for s in samplers], np.float32)
    else:
        _in_range("ETA", eta_in.astype(np.float64), 0.0, 1.0)
        if "ddpm" in samplers:
            raise InvalidInput("ETA applies to SAMPLER=ddim only (ddpm always samples with eta = 1)")
        eta = eta_in.astype(np.float32)

    labels_in = _column(inputs, contract.CLASS_LABEL, n)
    guidance_in = _column(inputs, contract.GUIDANCE_SCALE, n)
    if not facts.num_classes:
        for name, given in (("CLASS_LABEL", labels_in), ("GUIDANCE_SCALE", guidance_in)):
            if given is not None:
                raise InvalidInput(f"{name} is not accepted: this model is unconditional (it has no classes)")
        return ImageOptions(seeds.astype(np.int64), steps, eta, None, None)

    labels = np.full(n, contract.NO_LABEL, np.int64) if labels_in is None else labels_in.astype(np.int64)
    _in_range("CLASS_LABEL", labels, contract.NO_LABEL, facts.num_classes - 1)
    labels = np.where(labels == contract.NO_LABEL, facts.num_classes, labels)

    guidance = np.full(n, defaults.guidance_scale, np.float32) if guidance_in is None else guidance_in.astype(np.float32)
    _in_range("GUIDANCE_SCALE", guidance.astype(np.float64), 0.0, contract.MAX_GUIDANCE_SCALE)
    return ImageOptions(seeds.astype(np.int64), steps, eta, labels, guidance)


PREVIEW_CHARS = 40
"""How much of a rejected string an error message repeats: a 70 MB SAMPLER must not come back as a
70 MB message (gRPC carries it in trailing metadata, which clients cap at 16 KiB)."""


def _preview(text: str) -> str:
    if len(text) <= PREVIEW_CHARS:
        return repr(text)
    return f"{text[:PREVIEW_CHARS]!r}... ({len(text)} characters)"


def _decode(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"SAMPLER must be UTF-8 text, got {value[:20]!r}") from None
    return str(value)
