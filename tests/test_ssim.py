import pytest
import torch
from pytorch_msssim import ssim as msssim_ssim

from i3ad.ssim import l2_anomaly_map, ssim_anomaly_map, ssim_map

PAD = 11 // 2


def _pair(shape: tuple[int, ...], low: float, data_range: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen) * data_range + low
    noise = 0.15 * data_range * torch.randn(shape, generator=gen)
    y = (x + noise).clamp(low, low + data_range)
    return x, y


@pytest.mark.parametrize("low,data_range", [(-1.0, 2.0), (0.0, 1.0)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(32, 32), (48, 40)])
def test_valid_region_mean_matches_pytorch_msssim(low, data_range, channels, size):
    x, y = _pair((2, channels, *size), low, data_range)
    m = ssim_map(x, y, data_range=data_range)
    assert m.shape == (2, *size)
    valid_mean = m[:, PAD:-PAD, PAD:-PAD].mean(dim=(1, 2))
    expected = msssim_ssim(x, y, data_range=data_range, size_average=False, win_size=11, win_sigma=1.5)
    torch.testing.assert_close(valid_mean, expected, atol=1e-5, rtol=0)


def test_identical_images_give_one():
    x, _ = _pair((2, 3, 32, 32), -1.0, 2.0)
    m = ssim_map(x, x.clone())
    torch.testing.assert_close(m, torch.ones_like(m), atol=1e-5, rtol=0)
    a = ssim_anomaly_map(x, x.clone())
    assert a.min() >= 0 and a.max() < 1e-5


@pytest.mark.parametrize("size", [(7, 9), (4, 3), (1, 1)])
def test_same_size_output_for_small_images(size):
    x, y = _pair((1, 1, *size), -1.0, 2.0)
    m = ssim_map(x, y)
    assert m.shape == (1, *size)
    assert torch.isfinite(m).all()


def test_float32_under_autocast_and_for_double_input():
    x, y = _pair((1, 3, 24, 24), -1.0, 2.0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        m = ssim_map(x, y)
    assert m.dtype == torch.float32
    torch.testing.assert_close(m, ssim_map(x, y))
    assert ssim_map(x.double(), y.double()).dtype == torch.float32


def test_anomaly_maps():
    x, y = _pair((2, 3, 16, 20), -1.0, 2.0)
    a = ssim_anomaly_map(x, y)
    torch.testing.assert_close(a, (1 - ssim_map(x, y)).clamp(0, 2))
    assert a.shape == (2, 16, 20) and a.max() > 0
    l2 = l2_anomaly_map(x, y)
    torch.testing.assert_close(l2, ((x - y) ** 2).mean(dim=1))
    ones = torch.ones(1, 3, 4, 4)
    assert torch.all(l2_anomaly_map(ones, -ones) == 4.0)  # [-1, 1] scale: max is 4


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        ssim_map(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="4-D"):
        ssim_map(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="odd"):
        ssim_map(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), win_size=4)
