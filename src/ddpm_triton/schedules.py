"""Noise schedules: beta_t for t = 0..T-1, computed in float64.

Every schedule is defined by its cumulative product alpha_bar(t) except the linear one, which
Ho et al. define by its betas. Betas are clipped at 0.999 so alpha_bar never reaches exactly zero.
"""

from __future__ import annotations

import math

import numpy as np

MAX_BETA = 0.999


def linear_betas(timesteps: int) -> np.ndarray:
    """Ho et al.: beta from 1e-4 to 0.02 over 1000 steps, rescaled so other T keep the same total noise.

    Short schedules (T < 50) would ask for beta > 1; those are clipped like every other schedule.
    """
    scale = 1000.0 / timesteps
    return np.minimum(np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64), MAX_BETA)


def _betas_from_alpha_bar(alpha_bar: np.ndarray) -> np.ndarray:
    """alpha_bar sampled at t = 0..T (T+1 points, alpha_bar[0] = 1) -> T betas."""
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], MAX_BETA)


def cosine_betas(timesteps: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal 2021: alpha_bar follows cos^2, so information is destroyed more evenly over t."""
    t = np.linspace(0.0, 1.0, timesteps + 1, dtype=np.float64)
    f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return _betas_from_alpha_bar(f / f[0])


def sigmoid_betas(timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> np.ndarray:
    """Jabri et al. 2022 ("Scalable adaptive computation"): alpha_bar follows a shifted sigmoid."""
    t = np.linspace(0.0, 1.0, timesteps + 1, dtype=np.float64)

    def sigmoid(z: np.ndarray | float) -> np.ndarray | float:
        return 1.0 / (1.0 + np.exp(-z))

    v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
    f = (-sigmoid((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    return _betas_from_alpha_bar(np.clip(f, 1e-9, 1.0))


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}


def make_betas(name: str, timesteps: int) -> np.ndarray:
    try:
        return SCHEDULES[name](timesteps)
    except KeyError:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
