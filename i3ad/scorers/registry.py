"""The one list of detection methods: each test-time method's training method and how its scorer is built.

A *training* method ("i3ad", "ae-l2", "ae-ssim", "ref-stats") names the network `i3ad train` builds; a *test-time*
method names how a trained model scores images. Every training method scores with its own name; the
`+proj` methods run Dehaene et al.'s projection on an autoencoder trained with their base method. To add
a method, add a `Method` to `METHODS` (and, for a new network, a builder to `NETWORKS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..models import AutoencoderConfig, ConvAutoencoder, GeneratorConfig, InpaintGenerator
from .autoencoder import AutoencoderScorer
from .base import LoadedModel, Scorer
from .iterative import DetectionSettings, IterativeInpainter
from .projection import ProjectionScorer, ProjectionSettings
from .reference import ReferenceScorer, ReferenceStatistics

# (loaded model, detection settings, projection settings or None) -> scorer
ScorerBuilder = Callable[[LoadedModel, DetectionSettings, ProjectionSettings | None], Scorer]


def _inpainter(model: LoadedModel, settings: DetectionSettings, projection: ProjectionSettings | None) -> Scorer:
    return IterativeInpainter(model.module, settings, model.device)


def _autoencoder(model: LoadedModel, settings: DetectionSettings, projection: ProjectionSettings | None) -> Scorer:
    return AutoencoderScorer(model.module, int(model.info["patch_size"]), settings.batch_size, model.device)


def _projection(loss: str) -> ScorerBuilder:
    def build(model: LoadedModel, settings: DetectionSettings, projection: ProjectionSettings | None) -> Scorer:
        patch = int(model.info["patch_size"])
        return ProjectionScorer(
            model.module, loss, patch, projection or ProjectionSettings(), settings.batch_size, model.device
        )

    return build


def _reference(model: LoadedModel, settings: DetectionSettings, projection: ProjectionSettings | None) -> Scorer:
    return ReferenceScorer(model.module, settings.batch_size)


@dataclass(frozen=True)
class Method:
    """A test-time method: the training method that builds its model and the scorer it runs on that model."""

    train_method: str
    scorer: type  # the scorer class, for code that treats a family alike (e.g. the sweep's search spaces)
    build: ScorerBuilder


METHODS: dict[str, Method] = {
    "i3ad": Method("i3ad", IterativeInpainter, _inpainter),
    "ae-l2": Method("ae-l2", AutoencoderScorer, _autoencoder),
    "ae-ssim": Method("ae-ssim", AutoencoderScorer, _autoencoder),
    "ae-l2+proj": Method("ae-l2", ProjectionScorer, _projection("l2")),
    "ae-ssim+proj": Method("ae-ssim", ProjectionScorer, _projection("ssim")),
    "ref-stats": Method("ref-stats", ReferenceScorer, _reference),
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)  # test-time methods, in the order tables show them
TRAIN_METHODS: tuple[str, ...] = tuple(dict.fromkeys(m.train_method for m in METHODS.values()))

# training method -> the network it trains, built from model.json's `model_config`
NETWORKS: dict[str, Callable[[dict[str, Any]], torch.nn.Module]] = {
    "i3ad": lambda config: InpaintGenerator(GeneratorConfig(**config)),
    "ae-l2": lambda config: ConvAutoencoder(AutoencoderConfig(**config)),
    "ae-ssim": lambda config: ConvAutoencoder(AutoencoderConfig(**config)),
    "ref-stats": lambda config: ReferenceStatistics(**config),
}
assert set(NETWORKS) == set(TRAIN_METHODS), "every training method needs a network builder"


def base_method(method: str) -> str:
    """The training method a test-time method runs on: "ae-l2+proj" -> "ae-l2"; others map to themselves."""
    return METHODS[method].train_method if method in METHODS else method


def make_scorer(
    model: LoadedModel,
    settings: DetectionSettings | None = None,
    method: str | None = None,
    projection: ProjectionSettings | None = None,
) -> Scorer:
    """The scorer for a loaded model: iterative inpainting for I3AD, one pass for autoencoders.

    `method` (default: the model's own) may also name a test-time method on the model, i.e.
    "ae-l2+proj" / "ae-ssim+proj" on an ae-l2 / ae-ssim model, configured by `projection`
    (default settings when None). `settings` defaults to `DetectionSettings()`.
    """
    method = method or model.method
    if base_method(method) != model.method:
        raise ConfigError(
            f"method {method!r} runs on a model trained with {base_method(method)}, but this one was trained with "
            f"{model.method}; "
            f"train one with `i3ad train --method {base_method(method)}`"
        )
    return METHODS[method].build(model, settings or DetectionSettings(), projection)
