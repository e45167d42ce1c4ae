"""Package a trained model folder plus chosen detection settings as an MLflow pyfunc (no pickle).

The model is logged "from code" (`tracking/detector_model.py`), with a `detector` artifact folder of
`weights.safetensors`, `model.json` and `detector.json`, and the `i3ad` package as its code path, so it
loads wherever torch and the listed requirements are installed, with pickle deserialization disabled.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema

import i3ad
from i3ad.checkpoint import MODEL_JSON, WEIGHTS_FILE, read_model_info
from i3ad.errors import CheckpointError
from i3ad.scoring import detector_config, write_detector_json

MODEL_CODE = Path(__file__).with_name("detector_model.py")
ARTIFACT_KEY = "detector"  # must match detector_model.ARTIFACT_KEY (not imported: that file calls set_model)
I3AD_PACKAGE = Path(i3ad.__file__).parent
# Runtime needs of the bundled `i3ad` code (not the sweep's Ray/Optuna).
REQUIREMENTS = (
    "mlflow",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "pytorch-msssim",
    "pillow",
    "safetensors",
    "pandas",
    "matplotlib",
)


def pip_requirements() -> list[str]:
    """Pinned requirements from the installed versions (local build tags such as `+cpu` dropped)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            version = importlib.metadata.version(name).split("+")[0]
            pins.append(f"{name}=={version}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def signature() -> ModelSignature:
    """The detector's MLflow signature.

    Input: optional `image` (uint8 array, any shape, checked at predict) and optional `path`.
    Output: per-image source, decision (label at the operating threshold, normalised score, threshold), scores
    and an (H, W) anomaly map.
    """
    inputs = Schema([ColSpec(AnyType(), "image", required=False), ColSpec(DataType.string, "path", required=False)])
    outputs = Schema(
        [
            ColSpec(DataType.string, "source"),
            ColSpec(DataType.string, "label"),
            ColSpec(DataType.double, "score"),
            ColSpec(DataType.double, "score_normalised"),
            ColSpec(DataType.double, "threshold"),
            ColSpec(DataType.double, "score_ssim"),
            ColSpec(DataType.double, "score_l2"),
            ColSpec(Array(Array(DataType.float)), "anomaly_map"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(channels: int, size: int = 16) -> pd.DataFrame:
    """One small deterministic uint8 image (the detector resizes it to its own size)."""
    rng = np.random.default_rng(0)
    shape = (size, size) if channels == 1 else (size, size, 3)
    return pd.DataFrame({"image": [rng.integers(0, 256, size=shape, dtype=np.uint8)]})


def build_detector_folder(model_dir: Path, settings: dict[str, Any], out: Path) -> Path:
    """Copy the weights and model.json (not the pickle-bearing training state) and write detector.json."""
    model_dir, out = Path(model_dir), Path(out)
    info = read_model_info(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{model_dir} has no {WEIGHTS_FILE}; train the model before logging a detector")
    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, MODEL_JSON):
        shutil.copy2(model_dir / name, out / name)
    config = detector_config(info, settings)
    jsonable = {k: v for k, v in settings.items() if isinstance(v, (str, int, float, bool, type(None)))}
    write_detector_json(
        out, config, extra={"params": jsonable, "model_method": info.get("method"), "category": info.get("category")}
    )
    return out


def log_detector(model_dir: Path, settings: dict, name: str = "detector") -> str:
    """Log the packaged detector into the active MLflow run; returns its model URI."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_detector logs into the active MLflow run; call it inside `with mlflow.start_run():`")
    info = read_model_info(Path(model_dir))
    with tempfile.TemporaryDirectory(prefix="i3ad-detector-") as tmp:
        folder = build_detector_folder(Path(model_dir), settings, Path(tmp) / ARTIFACT_KEY)
        model_info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={ARTIFACT_KEY: str(folder)},
            code_paths=[str(I3AD_PACKAGE)],
            signature=signature(),
            input_example=input_example(int(info["channels"])),
            pip_requirements=pip_requirements(),
            metadata={
                "i3ad_method": info.get("method"),
                "i3ad_category": info.get("category"),
                "i3ad_version": i3ad.__version__,
            },
        )
    return model_info.model_uri
