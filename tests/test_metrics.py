import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from i3ad.metrics import (
    image_auroc,
    image_scores,
    pixel_auroc,
    pro_curve,
    pro_score,
    roc_curve_points,
    summarize,
)

# --- AUROC -------------------------------------------------------------------------------------


def test_image_auroc_hand_case():
    # Positive/negative pairs: (0.35 vs 0.1) ok, (0.35 vs 0.4) wrong, 0.8 beats both -> 3/4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # tie = 1/2


def test_image_auroc_errors():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="2 labels but 3 scores"):
        image_auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])


def test_roc_curve_points():
    fpr, tpr = roc_curve_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_pixel_auroc_hand_case():
    gt = np.array([[[True, False], [False, False]], [[False, False], [False, True]]])
    maps = np.array([[[0.9, 0.2], [0.3, 0.1]], [[0.95, 0.0], [0.05, 0.4]]])
    # Defects 0.9 and 0.4 vs normals {0.2, 0.3, 0.1, 0.95, 0.0, 0.05}: 0.9 beats 5, 0.4 beats 5.
    assert pixel_auroc(gt, maps) == pytest.approx(10 / 12)


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((5, 16, 16)) < 0.1
    maps = np.round(rng.random(gt.shape) + 0.2 * gt, 2).astype(np.float32)  # many ties
    expected = roc_auc_score(gt.ravel(), maps.ravel())
    assert pixel_auroc(gt, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_shape_mismatch():
    with pytest.raises(ValueError, match=r"masks \(2, 4, 4\) and maps \(2, 4, 5\)"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))


def test_pixel_auroc_needs_defects():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))


# --- PRO ---------------------------------------------------------------------------------------


def _reference_pro(gt: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Slow, obvious PRO: loop over every distinct threshold (score >= t is positive)."""
    structure = np.ones((3, 3), int)
    regions, normal = [], []
    for mask, amap in zip(gt, maps, strict=True):
        labeled, n = ndimage.label(mask, structure=structure)
        regions += [amap[labeled == k] for k in range(1, n + 1)]
        normal.append(amap[labeled == 0])
    normal = np.concatenate(normal)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    fprs, pros = np.array(fprs), np.array(pros)
    # Integrate up to the last point with fpr <= limit, then interpolate towards the next one.
    last = np.nonzero(fprs <= fpr_limit)[0][-1]
    area = np.trapezoid(pros[: last + 1], fprs[: last + 1])
    if fprs[last] < fpr_limit:
        y_at = np.interp(fpr_limit, fprs[last : last + 2], pros[last : last + 2])
        area += 0.5 * (pros[last] + y_at) * (fpr_limit - fprs[last])
    return area / fpr_limit


def test_pro_perfect_map_is_one():
    rng = np.random.default_rng(0)
    gt = np.zeros((3, 16, 16), bool)
    gt[0, 2:5, 3:9] = True
    gt[0, 10:14, 10:12] = True
    gt[2, 7, 7] = True
    maps = np.where(gt, 1.0, 0.0)
    assert pro_score(gt, maps) == pytest.approx(1.0, abs=1e-12)
    # Any normal pixel score below every defect score is equally perfect.
    maps = np.where(gt, 0.6 + 0.4 * rng.random(gt.shape), 0.5 * rng.random(gt.shape))
    assert pro_score(gt, maps) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_pro_constant_map(fpr_limit):
    # One threshold only, where every pixel is positive: the curve is (0,0) -> (1,1),
    # so the normalized area up to L is (L^2 / 2) / L = L / 2.
    gt = np.zeros((2, 8, 8), bool)
    gt[1, 2:4, 2:6] = True
    score = pro_score(gt, np.full(gt.shape, 0.7), fpr_limit=fpr_limit)
    assert score == pytest.approx(fpr_limit / 2)


def test_pro_two_regions_one_half_detected():
    # Region A (2 px) fully detected at 0.9; region B (4 px) half at 0.8, half at 0.1;
    # 10 normal pixels: one at 0.7, nine at 0.0.
    gt = np.zeros((1, 4, 4), bool)
    gt[0, 0, 0:2] = True  # A
    gt[0, :, 3] = True  # B (column 2 separates it from A)
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0:2] = 0.9
    maps[0, 0:2, 3] = 0.8
    maps[0, 2:4, 3] = 0.1
    maps[0, 1, 0] = 0.7
    fpr, pro = pro_curve(gt, maps)
    # t=0.9: (0, 1/2); t=0.8: (0, 3/4); t=0.7: (0.1, 3/4); t=0.1: (0.1, 1); t=0: (1, 1).
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.1, 0.1, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.75, 0.75, 1, 1, 1])
    # Area to 0.3: 0.1 * 0.75 + 0.2 * 1 = 0.275.
    assert pro_score(gt, maps, fpr_limit=0.3) == pytest.approx(0.275 / 0.3, abs=1e-6)
    assert pro_score(gt, maps, fpr_limit=0.05) == pytest.approx(0.75, abs=1e-6)


def test_pro_tie_gives_sloped_segment_interpolated_at_limit():
    # One region of 2 px (0.9, 0.6); normals 0.6, 0.4, 0.1, 0.1. The tie at 0.6 moves FPR and
    # PRO together, so the curve runs straight from (0, 0.5) to (0.25, 1).
    gt = np.array([[[True, False, False], [True, False, False]]])
    maps = np.array([[[0.9, 0.6, 0.4], [0.6, 0.1, 0.1]]])
    fpr, pro = pro_curve(gt, maps)
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.5, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 1, 1, 1, 1])
    # Limit 0.1: PRO(0.1) = 0.7, area = (0.5 + 0.7) / 2 * 0.1 = 0.06.
    assert pro_score(gt, maps, fpr_limit=0.1) == pytest.approx(0.6, abs=1e-6)
    # Limit 0.3: (0.5 + 1) / 2 * 0.25 + 0.05 * 1 = 0.2375.
    assert pro_score(gt, maps, fpr_limit=0.3) == pytest.approx(0.2375 / 0.3, abs=1e-6)


def test_pro_uses_8_connectivity():
    # Two diagonal pixels form ONE region, half of it detected.
    gt = np.zeros((1, 5, 5), bool)
    gt[0, 1, 1] = gt[0, 2, 2] = True
    maps = np.zeros((1, 5, 5))
    maps[0, 1, 1] = 1.0
    # A separate, undetected 1-px region: PRO at the top threshold is (0.5 + 0) / 2 = 0.25;
    # 4-connectivity would see three regions and give (1 + 0 + 0) / 3.
    gt[0, 4, 4] = True
    fpr, pro = pro_curve(gt, maps)
    assert fpr[1] == 0.0
    assert pro[1] == pytest.approx(0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pro_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n, h, w = 6, 20, 24
    gt = np.zeros((n, h, w), bool)
    for i in range(n - 2):  # the last two images are defect-free
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            gt[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    # Rounded scores create many ties between normal and defect pixels.
    maps = np.round(rng.random((n, h, w)) + 0.3 * gt, 2)
    for limit in (0.3, 0.05, 1.0):
        assert pro_score(gt, maps, fpr_limit=limit) == pytest.approx(_reference_pro(gt, maps, limit), abs=1e-6)


def test_pro_num_thresholds_approximates_exact():
    rng = np.random.default_rng(3)
    gt = np.zeros((4, 32, 32), bool)
    gt[:2, 8:16, 8:16] = True
    maps = rng.random(gt.shape) + 0.5 * gt
    exact = pro_score(gt, maps)
    assert pro_score(gt, maps, num_thresholds=2000) == pytest.approx(exact, abs=5e-3)
    # Quantized to the thresholds, the exact curve on the quantized maps is the same thing.
    levels = np.linspace(maps.min(), maps.max(), 50)
    quantized = levels[np.searchsorted(levels, maps, side="right") - 1]
    coarse = pro_score(gt, maps, num_thresholds=50)
    assert coarse == pytest.approx(pro_score(gt, quantized), abs=1e-9)


def test_pro_errors():
    with pytest.raises(ValueError, match="at least one ground-truth defect region"):
        pro_score(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        pro_score(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_score(np.ones((1, 4, 4), bool), np.zeros((1, 4, 4)), fpr_limit=0.0)
    with pytest.raises(ValueError, match="NaN"):
        gt = np.zeros((1, 4, 4), bool)
        gt[0, 0, 0] = True
        pro_score(gt, np.full((1, 4, 4), np.nan))


# --- image scores and summary ------------------------------------------------------------------


def test_image_scores():
    maps = np.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 5.0]]])
    np.testing.assert_allclose(image_scores(maps, "max"), [3.0, 5.0])
    np.testing.assert_allclose(image_scores(maps, "mean"), [1.5, 2.0])
    with pytest.raises(ValueError, match="reduction"):
        image_scores(maps, "median")


def test_summarize_keys_and_values():
    rng = np.random.default_rng(0)
    gt = np.zeros((4, 16, 16), bool)
    gt[2, 4:8, 4:8] = True
    gt[3, 10:12, 1:5] = True
    labels = np.array([0, 0, 1, 1])
    maps_ssim = rng.random(gt.shape) * 0.5 + gt
    maps_l2 = rng.random(gt.shape)
    out = summarize(labels, gt, maps_ssim, maps_l2)
    assert set(out) == {
        "image_auroc_ssim",
        "image_auroc_l2",
        "pixel_auroc_ssim",
        "pixel_auroc_l2",
        "pro_ssim",
        "pro_l2",
    }
    assert out["image_auroc_ssim"] == 1.0 and out["pixel_auroc_ssim"] == 1.0
    assert out["pro_ssim"] == pytest.approx(1.0)
    assert out["image_auroc_l2"] == image_auroc(labels, image_scores(maps_l2, "max"))
    assert out["pro_l2"] == pytest.approx(pro_score(gt, maps_l2))
    short = summarize(labels, gt, maps_ssim, maps_l2, reduction="mean", include_pro=False)
    assert set(short) == {"image_auroc_ssim", "image_auroc_l2", "pixel_auroc_ssim", "pixel_auroc_l2"}
