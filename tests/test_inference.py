"""The generator's inference rewrite computes the same function as the reference layers."""

import pytest
import torch
import torch.nn.functional as F

from i3ad.models import GatedConv2d, GatedDeconv2d, GeneratorConfig, InpaintGenerator
from i3ad.models.inference import InplaceGatedConv2d, SubpixelGatedDeconv2d, fold_upsampling, prepare_for_inference
from i3ad.scorers import inference_copy


@pytest.mark.parametrize("height, width", [(4, 4), (5, 7), (16, 16)])
def test_subpixel_deconv_equals_upsample_then_conv(height, width):
    torch.manual_seed(0)
    layer = GatedDeconv2d(6, 5)
    x = torch.randn(3, 6, height, width)
    with torch.no_grad():
        expected = layer.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        got = SubpixelGatedDeconv2d(layer)(x)
    assert got.shape == expected.shape == (3, 5, 2 * height, 2 * width)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_fold_upsampling_keeps_each_phase_sum_of_taps():
    weight = torch.randn(4, 3, 3, 3)
    folded = fold_upsampling(weight)
    assert folded.shape == (4, 4, 3, 2, 2)
    for phase in folded:  # every phase reads all 9 taps once, summed into 4
        torch.testing.assert_close(phase.sum(dim=(-2, -1)), weight.sum(dim=(-2, -1)))
    with pytest.raises(ValueError, match="3x3"):
        fold_upsampling(torch.randn(4, 3, 5, 5))


@pytest.mark.parametrize(
    "channels, width, attention, size", [(3, 16, True, (64, 64)), (1, 8, True, (32, 48)), (3, 8, False, (48, 32))]
)
def test_prepared_generator_computes_the_same_inpainting(channels, width, attention, size):
    torch.manual_seed(0)
    generator = InpaintGenerator(GeneratorConfig(channels=channels, width=width, attention=attention)).eval()
    if attention:
        generator.attention.gamma.data.fill_(0.7)  # 0 at init would hide the attention branch
    image = torch.rand(3, channels, *size) * 2 - 1
    mask = (torch.rand(3, 1, *size) > 0.6).float()
    prepared = prepare_for_inference(generator)
    with torch.no_grad():
        # float32: the folded kernels add taps in another order; through ~17 layers that carry the input's
        # signal (issue 15's init) the rounding reaches a few 1e-6 on outputs in [-1, 1].
        for expected, got in zip(generator(image, mask), prepared(image, mask), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # float64: the same function exactly, up to double rounding.
        exact = prepare_for_inference(generator.double())
        for expected, got in zip(
            generator(image.double(), mask.double()), exact(image.double(), mask.double()), strict=True
        ):
            torch.testing.assert_close(got, expected, atol=1e-11, rtol=0)
        generator.float()
    kinds = {type(m) for m in prepared.modules()}
    assert SubpixelGatedDeconv2d in kinds and InplaceGatedConv2d in kinds
    assert GatedConv2d not in kinds and GatedDeconv2d not in kinds
    # The original is untouched and still trainable.
    assert any(isinstance(m, GatedDeconv2d) for m in generator.modules())
    assert all(p.requires_grad for p in generator.parameters())
    assert not any(p.requires_grad for p in prepared.parameters())


def test_module_without_gated_layers_is_returned_as_it_is():
    module = torch.nn.Conv2d(3, 3, 3)
    assert prepare_for_inference(module) is module


def test_inference_copy_is_reused_until_the_weights_change():
    torch.manual_seed(0)
    generator = InpaintGenerator(GeneratorConfig(channels=3, width=8))
    first = inference_copy(generator)
    assert inference_copy(generator) is first
    optimiser = torch.optim.SGD(generator.parameters(), lr=0.1)
    image, mask = torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
    generator(image, mask)[1].sum().backward()
    optimiser.step()
    second = inference_copy(generator)
    assert second is not first
    generator.to(torch.float64)  # a move gives the parameters new storage, without a version bump
    assert inference_copy(generator) is not second
    generator.to(torch.float32)
    second = inference_copy(generator)
    with torch.no_grad():
        torch.testing.assert_close(second(image, mask)[1], generator(image, mask)[1], atol=2e-6, rtol=0)


@pytest.mark.parametrize("height, width", [(16, 16), (16, 40), (40, 16), (8, 8)])
def test_dilated_conv_without_its_padding_taps_is_the_same(height, width):
    torch.manual_seed(0)
    layer = GatedConv2d(6, 5, dilation=16)
    x = torch.randn(2, 6, height, width)
    pruned = InplaceGatedConv2d(layer)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), layer(x), atol=1e-6, rtol=1e-5)
    assert list(pruned._pruned) == [(height <= 16, width <= 16)]  # the pruned path ran
