import pytest
import torch

from ddpm_triton.config import PRESETS, UNetConfig, preset
from ddpm_triton.unet import UNet, count_parameters


def test_cifar10_preset_is_ho_et_al_size():
    assert count_parameters(UNet(PRESETS["cifar10"].unet)) == pytest.approx(35.7e6, rel=0.002)


@pytest.mark.parametrize("name", ["mnist", "tiny"])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_matches_input(name, batch):
    config = preset(name).unet
    model = UNet(config).eval()
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
    labels = torch.full((batch,), config.num_classes) if config.conditional else None
    with torch.no_grad():
        assert model(x, torch.rand(batch) * 999, labels).shape == x.shape


def test_unconditional_variant_takes_no_label():
    config = preset("tiny", num_classes=0).unet
    model = UNet(config).eval()
    assert model.label_embed is None
    assert model(torch.randn(2, 1, 28, 28), torch.tensor([1.0, 2.0])).shape == (2, 1, 28, 28)


def test_conditional_model_demands_a_label():
    with pytest.raises(ValueError, match="label"):
        UNet(preset("tiny").unet)(torch.randn(1, 1, 28, 28), torch.tensor([1.0]))


def test_labels_and_timesteps_change_the_prediction():
    torch.manual_seed(0)
    model = UNet(preset("tiny").unet).eval()
    for p in model.parameters():  # zero-initialised output layers would hide the conditioning
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        base = model(x, torch.tensor([10.0]), torch.tensor([1]))
        assert not torch.allclose(base, model(x, torch.tensor([900.0]), torch.tensor([1])))
        assert not torch.allclose(base, model(x, torch.tensor([10.0]), torch.tensor([2])))


def test_invalid_configs_explain_themselves():
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(base_channels=20, norm_groups=8)
    with pytest.raises(ValueError, match="halved"):
        UNetConfig(image_size=28, channel_mult=(1, 2, 2, 2))
