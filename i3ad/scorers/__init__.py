"""Detectors as a small family: one scorer per file behind the `Scorer` protocol, one registry of methods.

- `base.py`: `IterationMaps`, the `Scorer` protocol, `LoadedModel`, `as_tensor`, tiling
- `iterative.py`: I3AD's iterative SSIM-mask inpainting (`DetectionSettings`, `IterativeInpainter`)
- `autoencoder.py`: the autoencoder baselines' one-pass scorer (`AutoencoderScorer`)
- `projection.py`: the `+proj` baselines (`ProjectionSettings`, `ProjectionScorer`)
- `reference.py`: the no-learning reference `ref-stats` (`ReferenceStatistics`, `ReferenceScorer`)
- `registry.py`: the method names (`METHODS`, `METHOD_NAMES`, `TRAIN_METHODS`) and `make_scorer`
"""

from .autoencoder import AutoencoderScorer
from .base import IterationMaps, LoadedModel, Scorer, as_tensor, from_tiles, to_tiles
from .iterative import (
    COMPILE_BACKENDS,
    SCORE_REDUCTIONS,
    DetectionSettings,
    IterativeInpainter,
    compiled,
    inference_copy,
)
from .projection import ProjectionScorer, ProjectionSettings, projection_energy, projection_step
from .reference import ReferenceScorer, ReferenceStatistics, fit_reference
from .registry import METHOD_NAMES, METHODS, NETWORKS, TRAIN_METHODS, Method, base_method, make_scorer

__all__ = [
    "COMPILE_BACKENDS",
    "METHODS",
    "METHOD_NAMES",
    "NETWORKS",
    "SCORE_REDUCTIONS",
    "TRAIN_METHODS",
    "AutoencoderScorer",
    "DetectionSettings",
    "IterationMaps",
    "IterativeInpainter",
    "LoadedModel",
    "Method",
    "ProjectionScorer",
    "ProjectionSettings",
    "ReferenceScorer",
    "ReferenceStatistics",
    "Scorer",
    "as_tensor",
    "base_method",
    "compiled",
    "fit_reference",
    "from_tiles",
    "inference_copy",
    "make_scorer",
    "projection_energy",
    "projection_step",
    "to_tiles",
]
