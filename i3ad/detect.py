"""Test-time detection: iterative SSIM-mask inpainting (I3AD), autoencoder scoring, calibration, reports.

Iteration 0 is the checkerboard initialisation: each image is inpainted under four complementary
checkerboard masks and the four fills are combined into one reconstruction. Iteration i >= 1 masks
the pixels whose SSIM to the input is below the threshold U and inpaints them again, keeping every
unmasked pixel from the input (`x_{i+1} = G(x_i, M_i)` composited onto `x0`).

The fast path batches images and the four checkerboard masks, runs the generator's inference copy
(`models.inference`: sub-pixel deconvolutions, in-place gating; equal to ~1e-7), and passes through the
generator only the images whose mask is non-empty and still changing. An image whose mask is empty
becomes x0 again (every pixel is kept) without a generator pass; one whose mask is unchanged would come
back from the generator unchanged, so skipping it is exact for `stop_eps = 0`; `stop_eps > 0` is the
paper's stop rule (|M_i xor M_{i-1}| <= eps * |M_{i-1}|).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .checkpoint import WEIGHTS_FILE, load_weights, read_model_info
from .device import amp_dtype, autocast, resolve_device
from .errors import CheckpointError, ConfigError, DatasetError
from .masks import checkerboard_masks
from .metrics import image_auroc, image_scores, pixel_auroc, pro_score
from .models import AutoencoderConfig, ConvAutoencoder, GeneratorConfig, InpaintGenerator
from .models.inference import prepare_for_inference
from .ssim import ssim_map

SCORE_REDUCTIONS = ("max", "mean")
AUROC_KEYS = ("image_auroc_ssim", "image_auroc_l2", "pixel_auroc_ssim", "pixel_auroc_l2")
PRO_KEYS = ("pro_ssim", "pro_l2")
COMPILE_BACKENDS = ("inductor", "eager")


@dataclass
class DetectionSettings:
    """Test-time settings. `score` reduces an anomaly map to an image score: "max" or "mean" of the map."""

    threshold: float = 0.3  # U: a pixel is re-inpainted while SSIM(x0, x_i) < U
    patch_size: int = 6  # checkerboard cell size in pixels
    iterations: int = 30  # N
    stop_eps: float = 0.01
    score: str = "max"
    batch_size: int = 32  # generator inputs per forward pass
    # torch.compile the generator (`"inductor"`; `"eager"` checks the wiring only): faster passes after a
    # one-off compile of seconds to a minute per process, so worth it for long runs, not for a few images.
    compile: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold U must be in (0, 1], got {self.threshold}")
        if self.patch_size < 1:
            raise ConfigError(f"patch_size must be >= 1 pixel, got {self.patch_size}")
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.stop_eps < 0:
            raise ConfigError(f"stop_eps must be >= 0, got {self.stop_eps}")
        if self.score not in SCORE_REDUCTIONS:
            raise ConfigError(f"score {self.score!r} is unknown; choose one of {', '.join(SCORE_REDUCTIONS)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.compile not in (None, *COMPILE_BACKENDS):
            raise ConfigError(
                f"compile {self.compile!r} is unknown; choose one of {', '.join(COMPILE_BACKENDS)} or leave it unset"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectionSettings:
        """Build from a dict, ignoring keys that are not detection settings."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})


@dataclass
class IterationMaps:
    """Anomaly maps of every image after one detection iteration."""

    iteration: int
    ssim: np.ndarray  # (N, H, W) 1 - SSIM(x0, x_i)
    l2: np.ndarray  # (N, H, W) squared error, channel mean, on the [-1, 1] scale
    changed: int  # images whose reconstruction changed in this iteration
    generator_passes: int  # generator inputs processed so far (one image under one mask = one pass)


class Scorer(Protocol):
    """Anything that turns images into a sequence of anomaly maps, one entry per iteration."""

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]: ...


@dataclass
class LoadedModel:
    """A model folder loaded for inference."""

    method: str
    module: torch.nn.Module
    info: dict[str, Any]
    device: torch.device


def load_model(model_dir: Path, device: str | torch.device = "auto") -> LoadedModel:
    """Load a model folder written by `i3ad train` (safetensors weights + model.json; no pickle)."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    method = info.get("method")
    try:
        if method == "i3ad":
            module: torch.nn.Module = InpaintGenerator(GeneratorConfig(**info["model_config"]))
        elif method in ("ae-l2", "ae-ssim"):
            module = ConvAutoencoder(AutoencoderConfig(**info["model_config"]))
        else:
            raise CheckpointError(f"{model_dir / 'model.json'} names unknown method {method!r}")
        module.load_state_dict(load_weights(model_dir / WEIGHTS_FILE))
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"model folder {model_dir} does not match this i3ad version ({exc}); retrain it") from exc
    module.to(device).eval()
    return LoadedModel(method=method, module=module, info=info, device=device)


_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Callable]] = weakref.WeakKeyDictionary()
# generator -> (each parameter's (storage address, version counter), its inference copy)
_PREPARED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.nn.Module]] = weakref.WeakKeyDictionary()


def inference_copy(generator: torch.nn.Module) -> torch.nn.Module:
    """`prepare_for_inference(generator)`, reused while the generator's weights are unchanged.

    Reused so a compiled copy is compiled once per process; rebuilt when any parameter was written since
    (an optimiser step or `load_state_dict` bumps the tensor's version counter) or moved (`.to(device)`
    gives it new storage), so it is never stale.
    """
    fingerprint = tuple((p.data_ptr(), p._version) for p in generator.parameters())
    cached = _PREPARED.get(generator)
    if cached is None or cached[0] != fingerprint:
        cached = (fingerprint, prepare_for_inference(generator))
        _PREPARED[generator] = cached
    return cached[1]


def compiled(module: torch.nn.Module, backend: str) -> Callable:
    """`torch.compile(module)` with a dynamic batch size, once per module and backend in this process."""
    per_module = _COMPILED.setdefault(module, {})
    if backend not in per_module:
        per_module[backend] = torch.compile(module, backend=backend, dynamic=True)
    return per_module[backend]


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(images, dtype=torch.float32)
    if tensor.ndim != 4:
        raise ConfigError(f"images must be shaped (N, C, H, W), got {tuple(tensor.shape)}")
    return tensor


class IterativeInpainter:
    """I3AD's test-time procedure on a trained generator; batched and skipping finished images."""

    skip_cycles = True  # end 2-cycles without generator passes (exact); off only to time the upper bound

    def __init__(
        self, generator: InpaintGenerator, settings: DetectionSettings, device: torch.device | None = None
    ) -> None:
        self.generator = generator.eval()
        self.settings = settings
        self.device = device or next(generator.parameters()).device
        fast = inference_copy(generator)
        self.forward = compiled(fast, settings.compile) if settings.compile else fast
        self.dtype = amp_dtype(self.device)
        self.generator_passes = 0

    @torch.no_grad()
    def _inpaint(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Inpaint `images` (on CPU) under `masks` in device batches; returns CPU tensors."""
        out = torch.empty_like(images)
        step = self.settings.batch_size
        for start in range(0, len(images), step):
            x = images[start : start + step].to(self.device)
            m = masks[start : start + step].to(self.device)
            with autocast(self.device, self.dtype):
                _, fine = self.forward(x * (1 - m), m)
            out[start : start + step] = (fine.float() * m + x * (1 - m)).cpu()
        self.generator_passes += len(images)
        return out

    def initial_reconstruction(self, images: torch.Tensor) -> torch.Tensor:
        """Fill each image under the four checkerboard masks and combine the four fills."""
        n, _, h, w = images.shape
        boards = torch.from_numpy(checkerboard_masks(h, w, self.settings.patch_size))  # (4, 1, H, W)
        chunk = max(1, self.settings.batch_size // 4)
        out = torch.empty_like(images)
        for start in range(0, n, chunk):
            x = images[start : start + chunk]
            b = len(x)
            repeated = x.repeat_interleave(4, dim=0)  # image 0 x4, image 1 x4, ...
            masks = boards.repeat(b, 1, 1, 1)
            fills = self._inpaint(repeated, masks).view(b, 4, *x.shape[1:])
            out[start : start + b] = (fills * boards.unsqueeze(0)).sum(dim=1)
        return out

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]:
        """Yield the anomaly maps of all images after iteration 0 (checkerboard) and 1..N.

        When the generator is exhausted, `self.reconstruction` holds the final reconstructions.
        """
        x0 = _as_tensor(images)
        settings = self.settings
        self.generator_passes = 0
        x = self.initial_reconstruction(x0)
        similarity = ssim_map(x0, x)
        squared = (x0 - x).pow(2).mean(dim=1)
        yield self._maps(0, similarity, squared, len(x0))
        n = len(x0)
        active = torch.ones(n, dtype=torch.bool)
        previous = torch.zeros((n, 1, *x0.shape[2:]))  # M_{i-1}
        # x_i depends on M_i alone (x_i = G(x0 masked by M_i) composited onto x0), so M_i == M_{i-2} means
        # the images alternate between their last two states for good: exact, no more generator passes.
        before = _State(
            torch.zeros((n, 1, *x0.shape[2:])), x.clone(), similarity.clone(), squared.clone()
        )  # M_{i-2}, x_{i-2}
        cycling = torch.zeros(n, dtype=torch.bool)
        for iteration in range(1, settings.iterations + 1):
            if cycling.any():
                before.swap(cycling, x, similarity, squared)
            masks = (similarity < settings.threshold).float().unsqueeze(1)
            # An empty mask keeps every pixel from x0, so x_{i+1} = x0 with no generator pass; x0 then
            # has SSIM 1 everywhere, so the mask stays empty and the image is done.
            emptied = (active & (masks.flatten(1).sum(1) == 0)).nonzero().flatten()
            if len(emptied):
                x[emptied] = x0[emptied]
                similarity[emptied] = ssim_map(x0[emptied], x0[emptied])
                squared[emptied] = 0.0
                active[emptied] = False
            active &= self._still_changing(masks, previous, first=iteration == 1)
            if iteration > 2 and self.skip_cycles:
                repeats = active & (masks == before.masks).flatten(1).all(1)
                if repeats.any():  # x_i = x_{i-2}: the stored state; x_{i-1} becomes the other half of the cycle
                    before.swap(repeats, x, similarity, squared)
                    active &= ~repeats
                    cycling |= repeats
            index = active.nonzero().flatten()
            if len(index):
                before.store(index, previous, x, similarity, squared)
                x[index] = self._inpaint(x0[index], masks[index])
                similarity[index] = ssim_map(x0[index], x[index])
                squared[index] = (x0[index] - x[index]).pow(2).mean(dim=1)
                previous[index] = masks[index]
            self.reconstruction = x
            yield self._maps(iteration, similarity, squared, len(index) + len(emptied) + int(cycling.sum()))
        self.reconstruction = x

    def _maps(self, iteration: int, similarity: torch.Tensor, squared: torch.Tensor, changed: int) -> IterationMaps:
        return IterationMaps(
            iteration, (1.0 - similarity).numpy(), squared.numpy().copy(), changed, self.generator_passes
        )

    def _still_changing(self, masks: torch.Tensor, previous: torch.Tensor, first: bool) -> torch.Tensor:
        """False for images whose mask changed by at most eps * |previous mask| (the paper's stop rule)."""
        if first:
            return torch.ones(len(masks), dtype=torch.bool)
        changed = (masks != previous).flatten(1).sum(1)
        return changed > self.settings.stop_eps * previous.flatten(1).sum(1)


@dataclass
class _State:
    """Per-image mask and reconstruction of an earlier iteration, for the fast path's cycle check."""

    masks: torch.Tensor
    x: torch.Tensor
    similarity: torch.Tensor
    squared: torch.Tensor

    def store(
        self, index: torch.Tensor, masks: torch.Tensor, x: torch.Tensor, similarity: torch.Tensor, squared: torch.Tensor
    ) -> None:
        self.masks[index], self.x[index] = masks[index], x[index]
        self.similarity[index], self.squared[index] = similarity[index], squared[index]

    def swap(self, which: torch.Tensor, x: torch.Tensor, similarity: torch.Tensor, squared: torch.Tensor) -> None:
        """Exchange the stored reconstruction and maps with the current ones for the images in `which`."""
        for stored, current in ((self.x, x), (self.similarity, similarity), (self.squared, squared)):
            held = stored[which].clone()
            stored[which] = current[which]
            current[which] = held


def to_tiles(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut (N, C, H, W) images into non-overlapping (N * H/p * W/p, C, p, p) tiles, image by image."""
    n, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ConfigError(f"image size {h}x{w} is not a multiple of the autoencoder's patch size {p}")
    tiles = images.unfold(2, p, p).unfold(3, p, p)  # (n, c, h/p, w/p, p, p)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, p, p)


def from_tiles(tiles: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `to_tiles`: reassemble tiles into images of `shape` (N, C, H, W)."""
    n, c, h, w = shape
    p = tiles.shape[-1]
    out = tiles.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(n, c, h, w)


class AutoencoderScorer:
    """One-pass reconstruction scoring for the autoencoder baselines (tiles images larger than the model)."""

    def __init__(
        self, model: ConvAutoencoder, patch_size: int, batch_size: int = 32, device: torch.device | None = None
    ) -> None:
        self.model = model.eval()
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.device = device or next(model.parameters()).device
        self.dtype = amp_dtype(self.device)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruct images, tile by tile when they are larger than the autoencoder's input."""
        tiles = to_tiles(images, self.patch_size)
        out = torch.empty_like(tiles)
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start : start + self.batch_size].to(self.device)
            with autocast(self.device, self.dtype):
                out[start : start + self.batch_size] = self.model(batch).float().cpu()
        return from_tiles(out, images.shape)

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]:
        x0 = _as_tensor(images)
        x = self.reconstruct(x0)
        self.reconstruction = x
        yield IterationMaps(0, (1.0 - ssim_map(x0, x)).numpy(), (x0 - x).pow(2).mean(dim=1).numpy(), len(x0), len(x0))


def make_scorer(
    model: LoadedModel, settings: DetectionSettings, method: str | None = None, projection: Any = None
) -> Scorer:
    """The scorer for a loaded model: iterative inpainting for I3AD, one pass for autoencoders.

    `method` (default: the model's own) may also name a test-time method on the model, i.e.
    "ae-l2+proj" / "ae-ssim+proj" on an ae-l2 / ae-ssim model, configured by `projection`
    (`i3ad.projection.ProjectionSettings`, default settings when None).
    """
    # Imported here: projection builds on this module's tiling and IterationMaps.
    from .projection import ProjectionScorer, ProjectionSettings, base_method

    method = method or model.method
    if base_method(method) != model.method:
        raise ConfigError(
            f"method {method!r} runs on a model trained with {base_method(method)}, but this one was trained with "
            f"{model.method}; "
            f"train one with `i3ad train --method {base_method(method)}`"
        )
    if method != model.method:
        loss = "ssim" if model.method == "ae-ssim" else "l2"
        patch = int(model.info["patch_size"])
        return ProjectionScorer(
            model.module, loss, patch, projection or ProjectionSettings(), settings.batch_size, model.device
        )
    if model.method == "i3ad":
        return IterativeInpainter(model.module, settings, model.device)
    return AutoencoderScorer(model.module, int(model.info["patch_size"]), settings.batch_size, model.device)


@torch.no_grad()
def naive_iterative_inpainting(
    generator: InpaintGenerator, image: torch.Tensor, settings: DetectionSettings
) -> torch.Tensor:
    """The paper's algorithm written straightforwardly: one image, four separate checkerboard passes,
    then all N iterations with no stop rule. The reference the fast path is measured against.
    """
    device = next(generator.parameters()).device
    x0 = image.unsqueeze(0).to(device)
    _, _, h, w = x0.shape
    boards = torch.from_numpy(checkerboard_masks(h, w, settings.patch_size)).to(device)
    x = torch.zeros_like(x0)
    for board in boards:
        m = board.unsqueeze(0)
        _, fine = generator(x0 * (1 - m), m)
        x += fine * m
    for _ in range(settings.iterations):
        m = (ssim_map(x0, x) < settings.threshold).float().unsqueeze(1)
        _, fine = generator(x0 * (1 - m), m)
        x = fine * m + x0 * (1 - m)
    return x.squeeze(0).cpu()


@dataclass
class DetectionResult:
    """A detection run's report (the REPORT.json content) and its final maps and image scores."""

    report: dict[str, Any]
    ssim_maps: np.ndarray
    l2_maps: np.ndarray
    scores_ssim: np.ndarray
    scores_l2: np.ndarray
    per_iteration_scores: list[dict[str, np.ndarray]] = field(default_factory=list)


def _metrics(
    labels: np.ndarray, gt: np.ndarray, ssim: np.ndarray, l2: np.ndarray, reduction: str, with_pro: bool
) -> dict[str, float]:
    values = {
        "image_auroc_ssim": image_auroc(labels, image_scores(ssim, reduction)),
        "image_auroc_l2": image_auroc(labels, image_scores(l2, reduction)),
        "pixel_auroc_ssim": pixel_auroc(gt, ssim),
        "pixel_auroc_l2": pixel_auroc(gt, l2),
    }
    if with_pro:
        values.update(pro_ssim=pro_score(gt, ssim), pro_l2=pro_score(gt, l2))
    return values


def evaluate(
    scorer: Scorer,
    images: np.ndarray,
    gt_masks: np.ndarray,
    labels: np.ndarray,
    settings: DetectionSettings,
    on_iteration: Callable[[int, dict[str, float]], None] | None = None,
    include_pro: bool = True,
) -> DetectionResult:
    """Run detection and compute image/pixel AUROC after every iteration and PRO after the last.

    `on_iteration(iteration, metrics)` is called as soon as each iteration's AUROCs are known (used to
    report intermediate results to a scheduler). Needs normal and anomalous images among `labels`.
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise DatasetError(
            f"detection metrics need normal and anomalous images; this split has only label(s) {np.unique(labels).tolist()}. "
            "Use a larger split (--split all) or a category with defects"
        )
    per_iteration: list[dict[str, float]] = []
    per_iteration_scores: list[dict[str, np.ndarray]] = []
    detect_seconds = 0.0
    began = time.monotonic()
    tick = began
    last: IterationMaps | None = None
    iterations_run = 0
    for maps in scorer.iterate(images):
        detect_seconds += time.monotonic() - tick
        if per_iteration and maps.changed == 0:
            metrics = {k: v for k, v in per_iteration[-1].items() if k != "iteration"}
        else:
            metrics = _metrics(labels, gt_masks, maps.ssim, maps.l2, settings.score, with_pro=False)
        per_iteration.append({"iteration": maps.iteration, **metrics})
        per_iteration_scores.append(
            {"ssim": image_scores(maps.ssim, settings.score), "l2": image_scores(maps.l2, settings.score)}
        )
        if on_iteration is not None:
            on_iteration(maps.iteration, metrics)
        if maps.changed:
            iterations_run = maps.iteration
        last = maps
        tick = time.monotonic()
    assert last is not None
    final = {k: v for k, v in per_iteration[-1].items() if k != "iteration"}
    if include_pro:
        final.update(pro_ssim=pro_score(gt_masks, last.ssim), pro_l2=pro_score(gt_masks, last.l2))
    report = {
        **final,
        "per_iteration": per_iteration,
        "iterations_run": iterations_run,
        "images": int(len(labels)),
        "anomalous_images": int(labels.sum()),
        "seconds": round(detect_seconds, 4),
        "images_per_second": round(len(labels) / detect_seconds, 4) if detect_seconds > 0 else None,
        "total_seconds": round(time.monotonic() - began, 4),
        "generator_passes": int(last.generator_passes),
        "settings": asdict(settings),
    }
    return DetectionResult(
        report=report,
        ssim_maps=last.ssim,
        l2_maps=last.l2,
        scores_ssim=per_iteration_scores[-1]["ssim"],
        scores_l2=per_iteration_scores[-1]["l2"],
        per_iteration_scores=per_iteration_scores,
    )


CALIBRATION_THRESHOLDS = tuple(round(0.10 + 0.05 * i, 2) for i in range(9))  # 0.10 .. 0.50
# The paper: "L1 reconstruction errors less than the order of 10" after 10 iterations, in grey levels (0..255).
CALIBRATION_TOLERANCE = 10.0


def calibrate_threshold(
    generator: InpaintGenerator,
    images: np.ndarray,
    tolerance: float = CALIBRATION_TOLERANCE,
    thresholds: tuple[float, ...] = CALIBRATION_THRESHOLDS,
    iterations: int = 10,
    base: DetectionSettings | None = None,
) -> dict[str, Any]:
    """The paper's rule for U, run on normal (training) images.

    For each U on the grid, detection runs `iterations` iterations and the error is the mean absolute
    difference between x0 and x_N in grey levels (0..255, mean over pixels and channels). Normal images
    should end with (almost) nothing masked, i.e. a small error.

    The paper thresholds the anomaly score and takes the *minimal* threshold that keeps normals'
    error small: the most sensitive setting normal images still tolerate. With U a threshold on SSIM
    (`M = SSIM < U`), a larger U masks more, so the same rule picks the *largest* U whose error is at
    most `tolerance`. If no U meets it, the smallest U on the grid is returned with `met_tolerance` False.
    """
    base = base or DetectionSettings()
    x0 = _as_tensor(images)
    curve = []
    for u in thresholds:
        settings = DetectionSettings(**{**asdict(base), "threshold": u, "iterations": iterations})
        inpainter = IterativeInpainter(generator, settings)
        *_, last = inpainter.iterate(x0)
        error = float((x0 - inpainter.reconstruction).abs().mean() / 2.0 * 255.0)
        flagged = float((torch.from_numpy(last.ssim) > 1.0 - u).float().mean())
        curve.append({"threshold": u, "error": error, "flagged_fraction": flagged})
    passing = [point for point in curve if point["error"] <= tolerance]
    chosen = max(passing, key=lambda p: p["threshold"]) if passing else min(curve, key=lambda p: p["threshold"])
    return {
        "threshold": chosen["threshold"],
        "tolerance": tolerance,
        "iterations": iterations,
        "met_tolerance": bool(passing),
        "curve": curve,
        "images": int(len(x0)),
    }
