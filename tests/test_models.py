import pytest
import torch
from torch.nn.utils import parametrize

from i3ad.errors import ConfigError
from i3ad.models import (
    AutoencoderConfig,
    ConvAutoencoder,
    DiscriminatorConfig,
    GeneratorConfig,
    InpaintGenerator,
    PatchDiscriminator,
    SelfAttention,
)
from i3ad.models.layers import upsample_nearest_2x


def _batch(channels: int, height: int = 32, width: int = 32, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, channels, height, width, generator=g) * 2 - 1
    mask = (torch.rand(batch, 1, height, width, generator=g) > 0.6).float()
    return image, mask


@pytest.mark.parametrize("channels", [1, 3])
def test_generator_shapes_range_and_inpaint(channels):
    torch.manual_seed(0)
    generator = InpaintGenerator(GeneratorConfig(channels=channels, width=8))
    image, mask = _batch(channels, 32, 48)
    coarse, fine = generator(image, mask)
    for out in (coarse, fine):
        assert out.shape == image.shape
        assert out.min() >= -1 and out.max() <= 1
    filled = generator.inpaint(image, mask)
    known = mask.expand_as(image) == 0
    assert torch.equal(filled[known], image[known])


def test_generator_ignores_hole_pixels():
    torch.manual_seed(0)
    generator = InpaintGenerator(GeneratorConfig(channels=3, width=8))
    image, mask = _batch(3)
    other = image + 0.5 * mask  # differs only inside the holes
    with torch.no_grad():
        torch.testing.assert_close(generator(image, mask)[1], generator(other, mask)[1])


def test_generator_rejects_sizes_not_divisible_by_4():
    generator = InpaintGenerator(GeneratorConfig(channels=1, width=8))
    with pytest.raises(ConfigError, match="divisible by 4"):
        generator(*_batch(1, 30, 32))


def test_generator_presets_and_no_attention():
    assert GeneratorConfig.small(1) == GeneratorConfig(channels=1, width=16, attention=True)
    assert GeneratorConfig.deepfill(3).width == 48
    plain = InpaintGenerator(GeneratorConfig(channels=1, width=8, attention=False))
    assert not any(isinstance(m, SelfAttention) for m in plain.modules())
    assert plain(*_batch(1))[1].shape == (2, 1, 32, 32)


def test_self_attention_pools_large_maps():
    attention = SelfAttention(16, max_positions=8 * 8)
    torch.nn.init.ones_(attention.gamma)
    x = torch.randn(1, 16, 20, 36)
    assert attention(x).shape == x.shape


def test_generator_training_steps_reduce_l1():
    torch.manual_seed(0)
    generator = InpaintGenerator(GeneratorConfig(channels=1, width=8))
    _, mask = _batch(1, 32, 32, batch=4)
    ramp = torch.linspace(-0.8, 0.8, 32)
    image = (ramp[None, :] * ramp[:, None]).expand(4, 1, 32, 32)  # smooth, so it can be learned in a few steps
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)

    def l1() -> torch.Tensor:
        coarse, fine = generator(image, mask)
        return (coarse - image).abs().mean() + (fine - image).abs().mean()

    losses = []
    for _ in range(10):
        loss = l1()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        assert l1().item() < 0.97 * losses[0]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size,patches", [(32, 1), (64, 1), (128, 4)])
def test_discriminator_shapes(channels, size, patches):
    discriminator = PatchDiscriminator(DiscriminatorConfig(channels=channels, width=8))
    image, mask = _batch(channels, size, size)
    assert discriminator(image, mask).shape == (2, 4 * 8 * patches)


def test_discriminator_is_spectral_normalised_and_trains():
    discriminator = PatchDiscriminator(DiscriminatorConfig(channels=3, width=8))
    convs = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6
    assert all(parametrize.is_parametrized(conv, "weight") for conv in convs)
    real, mask = _batch(3)
    fake = torch.zeros_like(real, requires_grad=True)
    # hinge loss over real and fake in one graph, as the GAN loop does
    loss = torch.relu(1 - discriminator(real, mask)).mean() + torch.relu(1 + discriminator(fake, mask)).mean()
    loss.backward()
    assert fake.grad is not None


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_autoencoder_shapes(channels, size):
    model = ConvAutoencoder(AutoencoderConfig(channels=channels, image_size=size, width=8))
    x, _ = _batch(channels, size, size)
    z = model.encode(x)
    assert z.shape == (2, 100)
    x_hat = model.decode(z)
    assert x_hat.shape == x.shape and x_hat.abs().max() <= 1
    assert model(x).shape == x.shape


@pytest.mark.parametrize("size", [16, 48, 100])
def test_autoencoder_rejects_bad_image_size(size):
    with pytest.raises(ConfigError, match="image_size"):
        ConvAutoencoder(AutoencoderConfig(image_size=size))


def test_autoencoder_rejects_wrong_input_size():
    model = ConvAutoencoder(AutoencoderConfig(channels=1, image_size=32, width=8))
    with pytest.raises(ConfigError, match="image_size"):
        model(torch.zeros(1, 1, 64, 64))


def test_num_parameters():
    model = ConvAutoencoder(AutoencoderConfig(channels=1, image_size=32, width=8))
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 16, 8, 8)])
def test_upsample_nearest_2x_is_interpolate_bit_for_bit(shape):
    x = torch.randn(*shape, requires_grad=True)
    expected = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    got = upsample_nearest_2x(x)
    assert torch.equal(got, expected)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), x)
    (grad_got,) = torch.autograd.grad(got.square().sum(), x)
    assert torch.allclose(grad_got, grad_expected)
