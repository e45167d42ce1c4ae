import numpy as np
import pytest

from i3ad.errors import ConfigError
from i3ad.masks import MAX_HOLE_RATIO, MIN_HOLE_RATIO, checkerboard_masks, random_training_mask


@pytest.mark.parametrize(
    "height,width,cell", [(32, 32, 4), (32, 32, 6), (37, 50, 6), (64, 48, 64), (5, 7, 100), (8, 8, 1)]
)
def test_checkerboards_partition_the_image(height, width, cell):
    masks = checkerboard_masks(height, width, cell)
    assert masks.shape == (4, 1, height, width) and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    np.testing.assert_array_equal(masks.sum(axis=0), np.ones((1, height, width)))


def test_checkerboard_layout_and_coverage():
    masks = checkerboard_masks(48, 48, 6)
    np.testing.assert_allclose(masks.mean(axis=(1, 2, 3)), 0.25)
    # mask k = 2a + b holes the cells with (row parity, column parity) == (a, b)
    assert masks[0, 0, 0, 0] == 1 and masks[1, 0, 0, 6] == 1 and masks[2, 0, 6, 0] == 1 and masks[3, 0, 6, 6] == 1
    assert masks[0, 0, 5, 5] == 1 and masks[0, 0, 5, 6] == 0


def test_checkerboard_coverage_roughly_a_quarter_for_non_multiples():
    masks = checkerboard_masks(50, 70, 6)
    assert np.all(np.abs(masks.mean(axis=(1, 2, 3)) - 0.25) < 0.05)


@pytest.mark.parametrize("cell", [0, -3, 2.5])
def test_checkerboard_rejects_bad_cell(cell):
    with pytest.raises(ConfigError, match="cell"):
        checkerboard_masks(32, 32, cell)


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (128, 128)])
@pytest.mark.parametrize("with_boxes", [True, False])
def test_training_masks_shape_binary_and_hole_ratio(size, with_boxes):
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = random_training_mask(*size, rng, with_boxes=with_boxes)
        assert mask.shape == (1, *size) and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert MIN_HOLE_RATIO <= mask.mean() <= MAX_HOLE_RATIO


def test_training_masks_are_deterministic_given_the_seed():
    first = [random_training_mask(64, 64, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    rng = np.random.default_rng(7)
    a, b = random_training_mask(64, 64, rng), random_training_mask(64, 64, rng)
    assert not np.array_equal(a, b)
