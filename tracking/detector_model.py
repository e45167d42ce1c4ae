"""The packaged I3AD detector as an MLflow "model from code".

MLflow stores this file's source, not a pickled object, and `mlflow.models.set_model` names the model
to serve. Weights (safetensors) and settings (JSON) arrive as the artifact folder `detector`.

Input: a DataFrame with a column `image` (uint8 arrays (H, W) or (H, W, C), or nested lists) and/or a
column `path` (an image file, or a folder whose images are all scored). The `path` column reads files on
the host that runs the model, so it is OFF unless the environment variable `I3AD_PREDICT_PATH_ROOT`
names a folder: then only paths inside that folder are read (SECURITY.md). Output: one row per image with
`source`, `label` (`normal` / `anomalous` at the operating threshold chosen on validation normals,
i3ad.decision), `score` (from the detector's main map), `score_normalised` (0 at the median validation normal,
1 at the threshold), `threshold`, `score_ssim`, `score_l2` and `anomaly_map` (float32 (H, W) at the detector's
image size). A detector without an operating point gives an empty label and NaN.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

ARTIFACT_KEY = "detector"
PATH_ROOT_ENV = "I3AD_PREDICT_PATH_ROOT"  # the only folder the `path` column may read; unset = no `path` input
OUTPUT_COLUMNS = [
    "source",
    "label",
    "score",
    "score_normalised",
    "threshold",
    "score_ssim",
    "score_l2",
    "anomaly_map",
]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _allowed_path(path: str, index: int) -> Path:
    """`path` resolved, if `I3AD_PREDICT_PATH_ROOT` allows reading it; the message never says whether it exists."""
    from i3ad.errors import ConfigError

    root = os.environ.get(PATH_ROOT_ENV)
    if not root:
        raise ConfigError(
            f"row {index}: the `path` column is off (it reads files on the serving host); send the image in the "
            f"`image` column, or set {PATH_ROOT_ENV} to the folder that paths may name"
        )
    resolved = Path(root).resolve() / path if not Path(path).is_absolute() else Path(path)
    resolved = resolved.resolve()
    if not resolved.is_relative_to(Path(root).resolve()):
        raise ConfigError(f"row {index}: `path` must name a file or folder inside {PATH_ROOT_ENV}")
    return resolved


class I3ADDetector(PythonModel):
    """Scores images with a detector folder (model.json + weights.safetensors + detector.json)."""

    def load_context(self, context: PythonModelContext) -> None:
        # Imported here so that MLflow can read this file before the code path is on sys.path.
        from i3ad.scoring import load_detector

        self.model, self.config = load_detector(Path(context.artifacts[ARTIFACT_KEY]))

    def _images(self, frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        from i3ad.errors import ConfigError
        from i3ad.scoring import image_paths, load_images, prepare_array

        size, channels = self.config.image_size, int(self.model.info["channels"])
        sources: list[str] = []
        arrays: list[np.ndarray] = []
        for index, row in frame.reset_index(drop=True).iterrows():
            image = row.get("image")
            path = row.get("path")
            if not _is_missing(image):
                arrays.append(prepare_array(np.asarray(image, dtype=np.uint8), size, channels))
                sources.append(f"image[{index}]")
            elif not _is_missing(path):
                paths = image_paths(_allowed_path(str(path), index))
                arrays.extend(load_images(paths, size, channels))
                sources.extend(str(p) for p in paths)
            else:
                raise ConfigError(f"row {index} has neither an `image` nor a `path`")
        if not arrays:
            raise ConfigError("no images to score: give a DataFrame with an `image` or a `path` column")
        return sources, np.stack(arrays).astype(np.float32)

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from i3ad.scoring import decision_columns, score_images

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        sources, images = self._images(model_input)
        scored = score_images(self.model, self.config, images)
        kind = self.config.anomaly_map
        maps = scored.maps(kind)
        scores = scored.scores(kind).astype(np.float64)
        return pd.DataFrame(
            {
                "source": sources,
                **decision_columns(self.config, scores),
                "score": scores,
                "score_ssim": scored.scores_ssim.astype(np.float64),
                "score_l2": scored.scores_l2.astype(np.float64),
                "anomaly_map": [m.astype(np.float32) for m in maps],
            },
            columns=OUTPUT_COLUMNS,
        )


mlflow.models.set_model(I3ADDetector())
