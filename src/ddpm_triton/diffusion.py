"""The Gaussian diffusion process: forward noising, the training losses and the reverse step.

Everything is expressed through alpha_bar(t), looked up per sample. That one choice gives
respaced sampling (any step count), DDIM and DDPM from the same update, and lets the server put
images at different timesteps in one U-Net batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import DiffusionConfig
from .schedules import make_betas


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1] in x's dtype, to broadcast against images."""
    return values.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, eps_u + w (eps_c - eps_u), per sample.

    A scale of exactly 1 returns eps_c itself, not the formula's rounding of it: an image then gets
    the same bytes whether or not the batch it shares a U-Net call with needed guidance.
    """
    w = _per_sample(scale, eps_cond)
    return torch.where(w == 1, eps_cond, eps_uncond + w * (eps_cond - eps_uncond))


class Diffusion:
    """Tables of the process for T timesteps, with `alpha_bar[-1]` addressing alpha_bar = 1 (t = -1)."""

    def __init__(self, config: DiffusionConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.timesteps = config.timesteps
        betas = make_betas(config.schedule, config.timesteps)
        alpha_bar = np.cumprod(1.0 - betas)
        self.betas = torch.tensor(betas, dtype=torch.float64, device=device)
        # Index T (= -1 when indexing with t_prev = -1) holds 1.0: "before the first noising step".
        self.alpha_bar = torch.tensor(np.append(alpha_bar, 1.0), dtype=torch.float64, device=device)

    def to(self, device: torch.device | str) -> Diffusion:
        moved = object.__new__(Diffusion)
        moved.config, moved.timesteps = self.config, self.timesteps
        moved.betas, moved.alpha_bar = self.betas.to(device), self.alpha_bar.to(device)
        return moved

    # ---- forward process -------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), reparameterised by `noise`."""
        ab = _per_sample(self.alpha_bar[t], x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def simple_loss(self, eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """L_simple of Ho et al.: the mean squared error of the predicted noise."""
        return F.mse_loss(eps_pred.float(), noise.float())

    # ---- reverse process -------------------------------------------------------------------------

    def predict_x0(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = _per_sample(self.alpha_bar[t], x)
        return (x - (1 - ab).sqrt() * eps) / ab.sqrt()

    def step(
        self,
        x: torch.Tensor,
        eps: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor,
        eta: torch.Tensor,
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t -> x_{t_prev}, per sample; returns (x_prev, predicted x_0).

        The DDIM update of Song et al. with sigma = eta * sqrt(posterior variance). With eta = 1 it
        is exactly DDPM's ancestral step (posterior mean, variance beta-tilde) for any spacing of
        t -> t_prev, so one formula serves both samplers. x_0 is clipped to the data range [-1, 1]
        and eps re-derived from it, as DDPM sampling does. `noise` may be None when eta is all zero.
        """
        ab_t = _per_sample(self.alpha_bar[t], x)
        ab_prev = _per_sample(self.alpha_bar[t_prev], x)
        x0 = ((x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-1.0, 1.0)
        eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        variance = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        sigma = _per_sample(eta, x) * variance.sqrt()
        x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if noise is not None:
            x_prev = x_prev + sigma * noise
        return x_prev, x0

    # ---- variational bound (Ho et al. eq. 5), for evaluation ---------------------------------------

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x_0)."""
        ab_t = _per_sample(self.alpha_bar[t], x0)
        ab_prev = _per_sample(self.alpha_bar[t - 1], x0)  # t = 0 -> index -1 -> 1.0
        beta = _per_sample(self.betas[t], x0)
        mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * xt) / (1 - ab_t)
        variance = beta * (1 - ab_prev) / (1 - ab_t)
        # At t = 0 the variance is 0; Ho et al. use the t = 1 value in its place for the log.
        log_var = torch.log(torch.where(variance > 0, variance, _per_sample(self.betas[1], x0)))
        return mean, log_var

    def vlb_terms(self, eps_pred: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample terms of the bound in bits per dimension: KL(q || p_theta) for t > 0, the decoder NLL at t = 0."""
        x0_pred = self.predict_x0(xt, eps_pred, t).clamp(-1, 1)
        true_mean, true_log_var = self.posterior(x0, xt, t)
        model_mean, model_log_var = self.posterior(x0_pred, xt, t)
        kl = 0.5 * (
            -1.0
            + model_log_var
            - true_log_var
            + torch.exp(true_log_var - model_log_var)
            + (true_mean - model_mean) ** 2 * torch.exp(-model_log_var)
        )
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1)
        return torch.where(t == 0, nll / math.log(2.0), kl)


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian integrated over each pixel's bin."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
