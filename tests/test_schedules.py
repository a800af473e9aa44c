import numpy as np
import pytest
import torch

from ddpm_triton.config import DiffusionConfig
from ddpm_triton.diffusion import Diffusion
from ddpm_triton.schedules import SCHEDULES, make_betas


def test_linear_schedule_matches_ho_et_al():
    betas = make_betas("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    alpha_bar = np.cumprod(1 - betas)
    # Known endpoint of the Ho et al. schedule: alpha_bar_T ~ 4.04e-5 (almost pure noise).
    assert alpha_bar[-1] == pytest.approx(4.036e-5, rel=1e-3)
    assert alpha_bar[0] == pytest.approx(1 - 1e-4)


def test_cosine_schedule_endpoints():
    alpha_bar = np.cumprod(1 - make_betas("cosine", 1000))
    # First step removes almost nothing; the end is clipped noise (beta <= 0.999).
    assert 0.9999 < alpha_bar[0] < 1.0
    assert alpha_bar[-1] < 1e-4
    assert make_betas("cosine", 1000).max() <= 0.999


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("timesteps", [10, 1000])
def test_every_schedule_decreases_monotonically(name, timesteps):
    betas = make_betas(name, timesteps)
    assert betas.shape == (timesteps,)
    assert np.all(betas > 0) and np.all(betas < 1)
    assert np.all(np.diff(np.cumprod(1 - betas)) < 0)


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="cosine"):
        make_betas("quadratic", 10)


def test_q_sample_has_the_forward_process_statistics():
    diffusion = Diffusion(DiffusionConfig(1000, "linear"))
    torch.manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    for t in (0, 250, 999):
        ab = diffusion.alpha_bar[t].item()
        xt = diffusion.q_sample(x0, torch.full((20000,), t), torch.randn_like(x0))
        assert xt.mean().item() == pytest.approx(np.sqrt(ab) * 0.5, abs=0.02)
        assert xt.var().item() == pytest.approx(1 - ab, abs=0.02)
