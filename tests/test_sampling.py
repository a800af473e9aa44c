import numpy as np
import pytest
import torch

from ddpm_triton.config import DiffusionConfig, preset
from ddpm_triton.diffusion import Diffusion
from ddpm_triton.noise import SeededNoise
from ddpm_triton.pipeline import Pipeline
from ddpm_triton.sampling import Batch, UNetCall, denoise, run, sampler_eta, timesteps


def test_noise_is_standard_normal_and_keyed_by_seed():
    noise = SeededNoise((4, 32, 32))
    a = noise(torch.tensor([1, 2]), 0)
    assert a.shape == (2, 4, 32, 32)
    assert a.mean().abs() < 0.05 and (a.std() - 1).abs() < 0.05
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(noise(torch.tensor([1]), 5), noise(torch.tensor([1]), 6))


def test_noise_of_an_image_does_not_depend_on_its_batch():
    noise = SeededNoise((1, 8, 8))
    alone = noise(torch.tensor([42]), 7)
    in_batch = noise(torch.tensor([3, 42, -5, 2**40]), 7)
    assert torch.equal(alone[0], in_batch[1])


def test_a_large_requests_x_T_drawn_in_runs_is_one_draw():
    """The stepper draws x_T of many images on several threads; the bits are those of one draw."""
    from ddpm_triton.stepper import INITIAL_NOISE_RUN, Stepper

    config = preset("tiny")
    shape = (config.unet.in_channels, config.unet.image_size, config.unet.image_size)
    n = 2 * INITIAL_NOISE_RUN + 3
    stepper = Stepper(lambda x, t, labels: x, Diffusion(config.diffusion), shape, n, 10, None, torch.device("cpu"))
    seeds = np.arange(n, dtype=np.int64) * 7919 - 40
    admission = stepper.prepare(seeds, np.full(n, 10), np.ones(n, np.float32), None, None)
    assert torch.equal(admission.x, SeededNoise(shape)(torch.from_numpy(seeds), 0))


def test_negative_and_large_seeds_are_distinct():
    noise = SeededNoise((16,))
    draws = noise(torch.tensor([-1, 2**32 - 1, 2**63 - 1, -(2**63)]), 0)
    assert len({tuple(d.tolist()) for d in draws}) == 4


@pytest.mark.parametrize("steps", [1, 2, 10, 1000])
def test_timesteps_are_descending_and_span_the_schedule(steps):
    ts = timesteps(1000, steps)
    assert len(ts) == steps and ts[0] == 999 and ts == sorted(ts, reverse=True)
    if steps > 1:
        assert ts[-1] == 0


def test_timesteps_reject_out_of_range():
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        timesteps(1000, 0)


def test_ddpm_step_is_the_posterior_of_ho_et_al():
    """eta = 1 in the shared update is DDPM's ancestral step: posterior mean and variance beta-tilde."""
    d = Diffusion(DiffusionConfig(1000, "linear"))
    torch.manual_seed(0)
    x, eps, z = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([999, 500, 1])
    x_prev, x0 = d.step(x.double(), eps.double(), t, t - 1, torch.ones(3), z.double())
    mean, log_var = d.posterior(x0, x.double(), t)
    torch.testing.assert_close(x_prev, mean + (0.5 * log_var).exp() * z.double())


def test_sampler_eta():
    assert sampler_eta("ddpm") == 1.0 and sampler_eta("ddim") == 0.0 and sampler_eta("ddim", 0.3) == 0.3
    with pytest.raises(ValueError, match="ETA"):
        sampler_eta("ddim", 1.5)
    with pytest.raises(ValueError, match="ddim"):
        sampler_eta("ddpm", 0.5)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    config = preset("tiny")
    torch.manual_seed(0)
    from ddpm_triton.unet import UNet

    model = UNet(config.unet).eval()
    # Random but non-trivial: the zero-initialised layers would make eps ignore t and the label.
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return Pipeline(model, config)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_same_seed_same_image(pipeline, sampler):
    a = pipeline.sample([7, 8], steps=4, sampler=sampler, labels=[1, 2])
    b = pipeline.sample([7, 8], steps=4, sampler=sampler, labels=[1, 2])
    assert a.dtype == np.uint8 and a.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])


def test_ddpm_and_stochastic_ddim_differ_from_deterministic_ddim(pipeline):
    ddim0 = pipeline.sample([7], steps=4, sampler="ddim", eta=0.0, labels=[1])
    ddim1 = pipeline.sample([7], steps=4, sampler="ddim", eta=1.0, labels=[1])
    ddpm = pipeline.sample([7], steps=4, sampler="ddpm", labels=[1])
    assert not np.array_equal(ddim0, ddim1)
    np.testing.assert_array_equal(ddim1, ddpm)  # DDPM is DDIM with eta = 1


def test_image_alone_matches_image_in_batch(pipeline):
    alone = pipeline.sample([11], steps=4, sampler="ddpm", labels=[3], guidance_scale=2.0)
    batch = pipeline.sample([5, 11, 9], steps=4, sampler="ddpm", labels=[0, 3, -1], guidance_scale=2.0)
    assert np.abs(alone[0].astype(int) - batch[1].astype(int)).mean() <= 2


def test_guidance_extrapolates_from_the_unconditional_prediction():
    """With guidance the loop asks for [conditional; null-label] in one call and combines them."""
    config = preset("tiny")
    diffusion, noise, null = Diffusion(config.diffusion), SeededNoise((1, 28, 28)), config.unet.num_classes
    calls = []

    def unet(call: UNetCall) -> torch.Tensor:
        calls.append(call)
        return call.labels.float().view(-1, 1, 1, 1).expand_as(call.x) / 10  # eps = label / 10

    batch = Batch(torch.tensor([3]), 1, torch.zeros(1), torch.tensor([4]), torch.tensor([3.0]))
    guided = run(denoise(batch, diffusion, noise, null), unet)
    assert calls[0].labels.tolist() == [4, null] and calls[0].x.shape[0] == 2
    eps = torch.full((1, 1, 28, 28), 1.0 + 3.0 * (0.4 - 1.0))  # eps_u + w (eps_c - eps_u)
    t = torch.tensor([999])
    expected, _ = diffusion.step(noise(batch.seeds, 0), eps, t, torch.tensor([-1]), batch.eta, None)
    torch.testing.assert_close(guided, expected)
