"""Score new, unlabelled images with a trained model.

The code shared by `i3ad detect --images` and the packaged MLflow detector, so both give the same scores
on the same checkpoint and settings.

A *detector folder* is a model folder (`weights.safetensors` + `model.json`) plus an optional
`detector.json` holding the chosen test-time settings (U, patch size, N, score reduction, which map the
main score comes from, image size) and the operating point (`i3ad.decision`: the threshold chosen on
validation normals and the score normalisation) that turns a score into a `normal` / `anomalous` label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .atomic import atomic_write_json
from .checkpoint import read_json
from .checks import MAX_IMAGE_SIZE, check_int
from .data import list_images, load_image
from .decision import OperatingPoint
from .errors import ConfigError, DatasetError
from .loading import detection_settings, load_model
from .metrics import image_scores
from .scorers import DetectionSettings, LoadedModel, ProjectionSettings, Scorer, make_scorer

DETECTOR_JSON = "detector.json"
MAP_KINDS = ("ssim", "l2")
CAPTION_HEIGHT = 16  # pixels of the overlay's caption row (score and decision)
COLOUR_BAR_WIDTH = 64  # pixels of the overlay's colour bar, with its labels


@dataclass
class DetectorConfig:
    """What a detector folder adds to a model folder: detection settings, main map, image size."""

    settings: DetectionSettings
    image_size: int
    anomaly_map: str = "ssim"  # the map behind `score` and `anomaly_map` outputs: "ssim" or "l2"
    method: str | None = None  # a test-time method other than the model's own, e.g. "ae-l2+proj"
    # ProjectionSettings values of the methods that read them ("+proj", AnoGAN's own search, "+ld")
    projection: dict[str, Any] | None = None
    # the decision threshold on `score` chosen on validation normals (None: a folder no sweep chose; no labels)
    operating: OperatingPoint | None = None

    def __post_init__(self) -> None:
        if self.anomaly_map not in MAP_KINDS:
            raise ConfigError(f"anomaly_map {self.anomaly_map!r} is unknown; choose one of {', '.join(MAP_KINDS)}")
        check_int(self.image_size, "image_size", 4, MAX_IMAGE_SIZE)
        if self.operating is not None and self.operating.map != self.anomaly_map:
            raise ConfigError(
                f"the operating point was chosen on the {self.operating.map} map's scores but the detector scores "
                f"with the {self.anomaly_map} map; choose it again on the {self.anomaly_map} map"
            )

    def to_json(self) -> dict[str, Any]:
        values = {"detection": asdict(self.settings), "image_size": self.image_size, "anomaly_map": self.anomaly_map}
        if self.method is not None:
            values.update(test_method=self.method, projection=self.projection or {})
        elif self.projection is not None:  # the model's own method with settings of its own (AnoGAN)
            values.update(projection=self.projection)
        if self.operating is not None:
            values["operating_point"] = self.operating.to_json()
        return values


def detector_config(model_info: dict[str, Any], values: dict[str, Any] | None = None) -> DetectorConfig:
    """A detector's settings: `values` (e.g. a sweep's chosen params or a detector.json) over the model folder's.

    Detection settings fall back to the folder's own (`i3ad.loading.detection_settings`: chosen, else
    calibrated U, else defaults), the image size to its training image size.
    """
    values = dict(values or {})
    method = values.get("test_method") or values.get("method")
    method = None if method in (None, model_info.get("method")) else str(method)
    projection = {**values.get("projection", {}), **values} if method or "projection" in values else None
    operating = values.get("operating_point")
    if isinstance(operating, OperatingPoint):
        operating = operating.to_json()
    return DetectorConfig(
        settings=detection_settings(model_info, {**values.get("detection", {}), **values}),
        image_size=int(values.get("image_size") or model_info["image_size"]),
        anomaly_map=str(values.get("anomaly_map") or "ssim"),
        method=method,
        projection={k: v for k, v in projection.items() if isinstance(v, (int, float))} if projection else None,
        operating=OperatingPoint.from_json(operating) if operating else None,
    )


def write_detector_json(folder: Path, config: DetectorConfig, extra: dict[str, Any] | None = None) -> Path:
    """Write `detector.json` into a model folder; `extra` holds provenance (e.g. the original params)."""
    path = Path(folder) / DETECTOR_JSON
    atomic_write_json(path, {**config.to_json(), **(extra or {})})
    return path


def load_detector(folder: Path, device: str = "auto") -> tuple[LoadedModel, DetectorConfig]:
    """Load a detector folder: the model plus its detector.json settings (model.json's when absent)."""
    folder = Path(folder)
    model = load_model(folder, device)
    path = folder / DETECTOR_JSON
    values = read_json(path) if path.exists() else {}
    return model, detector_config(model.info, values)


def prepare_array(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """A uint8 image (H, W) or (H, W, C) as float32 (C, size, size) in [-1, 1].

    Converted and resized exactly as `i3ad.data.load_image` does for a file holding the same pixels.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ConfigError(f"images must be uint8 arrays, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ConfigError(f"an image must be shaped (H, W) or (H, W, C) with C in 1, 3, 4; got {array.shape}")
    pil = Image.fromarray(array).convert("L" if channels == 1 else "RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    out = np.asarray(pil, dtype=np.uint8)
    out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    return out.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def image_paths(target: Path) -> list[Path]:
    """The image files of a folder (sorted) or the one file given."""
    target = Path(target)
    if target.is_dir():
        paths = list_images(target)
        if not paths:
            raise DatasetError(f"folder {target} holds no images (looked for .png, .jpg, .bmp, .tif)")
        return paths
    if not target.exists():
        raise DatasetError(f"image path {target} does not exist")
    return [target]


def load_images(paths: Sequence[Path], size: int, channels: int) -> np.ndarray:
    """Image files as one float32 (N, C, size, size) batch in [-1, 1]."""
    return np.stack([load_image(p, size, channels) for p in paths]).astype(np.float32)


@dataclass
class ScoredImages:
    """Final anomaly maps (N, H, W) and image scores (N,) of a batch of images."""

    ssim_maps: np.ndarray
    l2_maps: np.ndarray
    scores_ssim: np.ndarray
    scores_l2: np.ndarray

    def scores(self, kind: str) -> np.ndarray:
        return self.scores_ssim if kind == "ssim" else self.scores_l2

    def maps(self, kind: str) -> np.ndarray:
        return self.ssim_maps if kind == "ssim" else self.l2_maps


def make_detector_scorer(model: LoadedModel, config: DetectorConfig) -> Scorer:
    """The scorer a detector config asks for (the model's own method unless `config.method` says otherwise)."""
    if config.method is None and config.projection is None:
        return make_scorer(model, config.settings)
    return make_scorer(
        model, config.settings, method=config.method, projection=ProjectionSettings.from_dict(config.projection or {})
    )


def score_images(model: LoadedModel, config: DetectorConfig, images: np.ndarray) -> ScoredImages:
    """Run detection (all iterations) on a (N, C, H, W) batch in [-1, 1]; maps and scores after the last."""
    if images.ndim != 4 or images.shape[1] != model.info["channels"]:
        raise ConfigError(
            f"images must be shaped (N, {model.info['channels']}, H, W) for this model, got {tuple(images.shape)}"
        )
    settings = config.settings
    *_, last = make_detector_scorer(model, config).iterate(images)
    return ScoredImages(
        ssim_maps=last.ssim,
        l2_maps=last.l2,
        scores_ssim=image_scores(last.ssim, settings.score, settings.border),
        scores_l2=image_scores(last.l2, settings.score, settings.border),
    )


def overlay_rgb(image: np.ndarray, amap: np.ndarray, vmax: float | None = None, alpha: float = 0.5) -> np.ndarray:
    """Blend an anomaly map (H, W) over the gray version of an image (C, H, W) in [-1, 1].

    The map is coloured with `inferno` from 0 to `vmax`; returns uint8 (H, W, 3).
    """
    from matplotlib import colormaps  # no pyplot: works headless and without a backend

    unit = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
    # Gray base: the image's own colours would be confused with the heat map's.
    gray = unit[0] if unit.shape[0] == 1 else np.tensordot([0.299, 0.587, 0.114], unit, axes=1)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    top = float(vmax) if vmax else float(np.max(amap)) or 1.0
    heat = colormaps["inferno"](np.clip(amap / top, 0.0, 1.0))[..., :3]
    return (np.clip((1 - alpha) * rgb + alpha * heat, 0.0, 1.0) * 255).round().astype(np.uint8)


def _colour_bar(height: int, vmax: float, threshold: float | None) -> Image.Image:
    """A vertical inferno bar from 0 (bottom) to `vmax` (top), labelled, with the threshold marked in cyan."""
    from matplotlib import colormaps
    from PIL import ImageDraw

    ramp = colormaps["inferno"](np.linspace(1.0, 0.0, height))[:, :3]
    bar = (np.repeat(ramp[:, None, :], 12, axis=1) * 255).round().astype(np.uint8)
    canvas = Image.new("RGB", (COLOUR_BAR_WIDTH, height), "white")
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((15, 0), f"{vmax:.3g}", fill="black")
    draw.text((15, height - 11), "0", fill="black")
    if threshold is not None and 0 <= threshold <= vmax:
        y = int(round((1 - threshold / vmax) * (height - 1)))
        draw.line([(0, y), (14, y)], fill=(0, 255, 255), width=2)
        draw.text((15, max(0, min(height - 22, y - 5))), "thr", fill="black")
    return canvas


def overlay_panel(
    image: np.ndarray,
    amap: np.ndarray,
    vmax: float,
    min_side: int = 256,
    caption: str | None = None,
    region: np.ndarray | None = None,
    threshold: float | None = None,
) -> Image.Image:
    """The image and its anomaly-map overlay side by side, enlarged (nearest) to at least `min_side`.

    With `caption` (the score and decision), a colour bar of the map's scale and `region` (a boolean (H, W)
    predicted region, outlined in cyan on the overlay), the panel reads on its own.
    """
    unit = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
    rgb = np.repeat(unit, 3, axis=0) if unit.shape[0] == 1 else unit
    left = (rgb.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    scale = max(1, -(-min_side // image.shape[1]))
    heat = overlay_rgb(image, amap, vmax)
    if region is not None and region.any():
        from scipy import ndimage

        big = np.kron(region.astype(np.uint8), np.ones((scale, scale), dtype=np.uint8)).astype(bool)
        heat = np.kron(heat, np.ones((scale, scale, 1), dtype=np.uint8))
        heat[big & ~ndimage.binary_erosion(big, iterations=2)] = (0, 255, 255)
        left = np.kron(left, np.ones((scale, scale, 1), dtype=np.uint8))
        panel = Image.fromarray(np.concatenate([left, heat], axis=1))
    else:
        panel = Image.fromarray(np.concatenate([left, heat], axis=1))
        panel = panel.resize((panel.width * scale, panel.height * scale), Image.Resampling.NEAREST)
    if caption is None:
        return panel
    from PIL import ImageDraw

    bar = _colour_bar(panel.height, vmax, threshold)
    out = Image.new("RGB", (panel.width + bar.width, panel.height + CAPTION_HEIGHT), "white")
    out.paste(panel, (0, CAPTION_HEIGHT))
    out.paste(bar, (panel.width, CAPTION_HEIGHT))
    ImageDraw.Draw(out).text((4, 2), caption, fill="black")
    return out


def decision_columns(config: DetectorConfig, scores: np.ndarray) -> dict[str, list[Any]]:
    """`label`, `score_normalised` and `threshold` per image (empty / NaN without an operating point)."""
    point = config.operating
    if point is None:
        return {
            "label": [""] * len(scores),
            "score_normalised": [float("nan")] * len(scores),
            "threshold": [float("nan")] * len(scores),
        }
    return {
        "label": point.labels(scores),
        "score_normalised": [float(v) for v in point.normalise(scores)],
        "threshold": [point.threshold] * len(scores),
    }


def score_folder(model: LoadedModel, config: DetectorConfig, target: Path, out: Path) -> list[dict[str, Any]]:
    """Score the images of a folder (or one file).

    Writes `out/scores.csv` (path, label, score, score_normalised, threshold, score_ssim, score_l2) and
    `out/overlays/<name>.png` (image | map overlay with the predicted region outlined | colour bar, one colour
    scale for the folder, the score and decision on top). Without an operating point the label is empty.
    The predicted region of an `anomalous` image is its map's pixels above the threshold.
    """
    import csv

    paths = image_paths(Path(target))
    images = load_images(paths, config.image_size, int(model.info["channels"]))
    scored = score_images(model, config, images)
    out = Path(out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    maps = scored.maps(config.anomaly_map)
    vmax = float(np.percentile(maps, 99.5)) or 1.0
    scores = scored.scores(config.anomaly_map)
    decisions = decision_columns(config, scores)
    point = config.operating
    rows = []
    for i, path in enumerate(paths):
        caption = f"{config.anomaly_map} score {scores[i]:.4g}"
        region = None
        if point is not None:
            caption += (
                f" (normalised {decisions['score_normalised'][i]:.2f}; threshold {point.threshold:.4g}): "
                f"{decisions['label'][i]}"
            )
            region = maps[i] > point.threshold if decisions["label"][i] == "anomalous" else None
        panel = overlay_panel(
            images[i], maps[i], vmax, caption=caption, region=region, threshold=point.threshold if point else None
        )
        panel.save(out / "overlays" / f"{path.stem}.png")
        rows.append(
            {
                "path": str(path),
                "label": decisions["label"][i],
                "score": float(scores[i]),
                "score_normalised": decisions["score_normalised"][i],
                "threshold": decisions["threshold"][i],
                "score_ssim": float(scored.scores_ssim[i]),
                "score_l2": float(scored.scores_l2[i]),
            }
        )
    with (out / "scores.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows
