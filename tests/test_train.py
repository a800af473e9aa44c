import json

import pytest
import torch

from ddpm_triton.checkpoint import MODEL_FILE, load_model, load_weights, save_weights
from ddpm_triton.config import ModelConfig, preset
from ddpm_triton.data import load_dataset
from ddpm_triton.train import TrainConfig, Trainer, lr_factor

FAST = {"batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "log_every": 5, "sample_every": 0, "checkpoint_every": 1000}


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", mnist_dir)


def test_mnist_reads_the_idx_files(mnist):
    assert mnist.images.shape == (10000, 28, 28, 1) and mnist.images.dtype.name == "uint8"
    assert mnist.labels[:4].tolist() == [7, 2, 1, 0] and mnist.num_classes == 10


def test_missing_dataset_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)


def test_a_few_steps_lower_the_loss(mnist, tmp_path):
    history = Trainer(preset("tiny"), TrainConfig(steps=40, **FAST), mnist, tmp_path, "cpu").fit()
    assert history[-1]["loss"] < 0.6 * history[0]["loss"], history


def test_resume_continues_where_it_stopped(mnist, tmp_path):
    Trainer(preset("tiny"), TrainConfig(steps=4, **FAST), mnist, tmp_path, "cpu").fit()
    resumed = Trainer(preset("tiny"), TrainConfig(steps=6, **FAST), mnist, tmp_path, "cpu")
    assert resumed.step == 4
    assert resumed.optimizer.state_dict()["state"]  # Adam moments came back
    resumed.fit()
    assert json.loads((tmp_path / "history.json").read_text())[-1]["step"] == 6


def test_resume_refuses_another_model(mnist, tmp_path):
    Trainer(preset("tiny"), TrainConfig(steps=1, **FAST), mnist, tmp_path, "cpu").fit()
    with pytest.raises(ValueError, match="another model config"):
        Trainer(preset("tiny", num_classes=0), TrainConfig(steps=2, **FAST), mnist, tmp_path, "cpu")


def test_checkpoint_round_trip(tmp_path, tiny_unet):
    config = preset("tiny")
    save_weights(tmp_path / MODEL_FILE, tiny_unet.state_dict(), config)
    model, loaded_config = load_model(tmp_path)  # a training directory resolves to its EMA file
    assert loaded_config == config and ModelConfig.from_json(config.to_json()) == config
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), tiny_unet(x, t, y))


def test_foreign_safetensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a ddpm-triton model file"):
        load_weights(tmp_path / "other.safetensors")


def test_lr_warms_up_then_decays_to_zero():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


def test_cifar10_python_batches_are_read(tmp_path):
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (5, 3 * 32 * 32), dtype=np.uint8)
    with (tmp_path / "data_batch_1").open("wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3, 9]}, f)
    dataset = load_dataset("cifar10", tmp_path)
    assert dataset.images.shape == (5, 32, 32, 3) and dataset.labels.tolist() == [0, 1, 2, 3, 9]
    # CHW rows of the batch file become HWC images.
    assert dataset.images[1, 0, 0].tolist() == [data[1, 0], data[1, 1024], data[1, 2048]]


def test_image_folders_become_classes(tmp_path):
    import numpy as np
    from PIL import Image

    for name, value in (("cats", 10), ("dogs", 200)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 50, 3), value, np.uint8)).save(tmp_path / name / f"{i}.png")
    dataset = load_dataset("folder", tmp_path, image_size=16, channels=3)
    assert dataset.images.shape == (4, 16, 16, 3) and dataset.num_classes == 2
    assert dataset.labels.tolist() == [0, 0, 1, 1] and dataset.images[2].mean() == 200


def test_variational_bound_terms_are_finite_bits_per_dim(tiny_unet):
    from ddpm_triton.diffusion import Diffusion

    diffusion = Diffusion(preset("tiny").diffusion)
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    t = torch.tensor([0, 1, 500, 999])
    noise = torch.randn_like(x0)
    xt = diffusion.q_sample(x0, t, noise)
    with torch.no_grad():
        terms = diffusion.vlb_terms(tiny_unet(xt, t.float(), torch.full((4,), 10)), x0, xt, t)
    assert terms.shape == (4,) and torch.isfinite(terms).all() and (terms >= 0).all()
    # A perfect noise prediction makes the KL terms vanish; the t = 0 decoder NLL stays positive.
    perfect = diffusion.vlb_terms(noise, x0, xt, t)
    assert perfect[1:].abs().max() < 1e-3 and perfect[0] > 0
