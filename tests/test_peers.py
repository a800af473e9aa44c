"""The diffusers peers of `ddpm-triton bench` (src/ddpm_triton/peers.py): the tiny preset really runs on a CPU."""

import subprocess
import sys

import numpy as np
import pytest

from ddpm_triton.peers import PEERS, Peer, measure_peer


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_tiny_peer_measures_real_pipeline_calls(sampler):
    row = measure_peer("diffusers-fp32-eager", 2, 3, "cpu", 2, preset="tiny", sampler=sampler, warmup_calls=1)
    assert row["system"] == "diffusers-fp32-eager" and row["via_triton"] is False and row["format"] == "diffusers"
    assert (row["batch"], row["steps"], row["concurrency"]) == (2, 3, 1)
    assert (row["sampler"], row["precision"]) == (sampler, "fp32")
    assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and len(row["times_ms"]) == 2
    assert row["images_per_s"] == pytest.approx(2 / (row["p50_ms"] / 1000))
    assert row["output_shape"] == [2, 16, 16, 3] and row["output_finite"]
    assert row["peak_gpu_mb"] is None and row["peak_gpu_reserved_mb"] is None and row["warmup_s"] > 0
    settings = row["settings"]
    assert settings["diffusers"] == "0.42.1" and settings["preset"] == "tiny" and settings["repeats"] == 2
    assert settings["pipeline"] == {"ddpm": "DDPMPipeline", "ddim": "DDIMPipeline"}[sampler]
    assert settings["scheduler_config"]["num_train_timesteps"] == 1000
    assert "num_inference_steps=3" in settings["call"] and "output_type='np'" in settings["call"]


def test_pipeline_call_returns_images_of_the_requested_batch():
    peer = Peer("diffusers-fp32-eager", "cpu", preset="tiny")
    images = peer(3, 2, sampler="ddim", seed=1)
    assert isinstance(images, np.ndarray) and images.shape == (3, 16, 16, 3)
    assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, peer(3, 2, sampler="ddim", seed=1))  # seeded: the same work twice
    assert not np.array_equal(images, peer(3, 2, sampler="ddim", seed=2))


def test_cifar10_preset_is_the_ho_et_al_unet():
    peer = Peer("diffusers-fp16-compiled", "cpu", preset="cifar10")  # built, not run: compiling takes minutes on a CPU
    assert peer.parameters == 35_746_307
    assert peer.unet_config["block_out_channels"] == (128, 256, 256, 256) and peer.unet_config["sample_size"] == 32
    assert PEERS["diffusers-fp16-compiled"].compile_mode == "reduce-overhead"
    assert PEERS["diffusers-fp16-compiled"].channels_last and PEERS["diffusers-fp16-compiled"].precision == "fp16"


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown peer"):
        Peer("diffusers-int4", "cpu", preset="tiny")
    with pytest.raises(ValueError, match="unknown preset"):
        Peer("diffusers-fp32-eager", "cpu", preset="huge")
    with pytest.raises(ValueError, match="unknown sampler"):
        measure_peer("diffusers-fp32-eager", 1, 1, "cpu", 1, preset="tiny", sampler="euler")


def test_diffusers_and_matplotlib_are_imported_only_when_used():
    code = (
        "import sys, ddpm_triton.peers, ddpm_triton.benchplot; "
        "print(sorted(m for m in ('diffusers', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
